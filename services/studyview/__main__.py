from cxrmesh.services.studyview.service import main

main()

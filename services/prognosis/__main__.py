from cxrmesh.services.prognosis.service import main

main()

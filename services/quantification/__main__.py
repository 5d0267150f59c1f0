from cxrmesh.services.quantification.service import main

main()

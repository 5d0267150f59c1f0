from cxrmesh.services.search.service import main

main()

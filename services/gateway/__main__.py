from cxrmesh.services.gateway.service import main

main()

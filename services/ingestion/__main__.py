from cxrmesh.services.ingestion.service import main

main()

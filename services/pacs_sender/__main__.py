from cxrmesh.services.pacs_sender.service import main

main()

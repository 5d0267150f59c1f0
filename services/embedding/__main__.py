from cxrmesh.services.embedding.service import main

main()

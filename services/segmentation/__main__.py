from cxrmesh.services.segmentation.service import main

main()

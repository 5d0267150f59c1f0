from cxrmesh.services.landmarks.service import main

main()

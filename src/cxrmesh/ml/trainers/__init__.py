"""One trainer per model family: segmentation members, landmarker, embedder, prognosis head."""

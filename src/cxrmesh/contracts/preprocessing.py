"""The preprocessing contract shared by the corpus generator, training, export and the services.

Stated once here so that an image seen in training and an image arriving at ingestion go through
exactly the same steps: stored pixels -> modality LUT -> VOI LUT -> MONOCHROME1 inversion ->
aspect-preserving resize with centred zero padding (letterbox) to MODEL_SIZE x MODEL_SIZE.
The model input is a float32 tensor of shape (N, 1, MODEL_SIZE, MODEL_SIZE) scaled to [0, 1],
1.0 being white (dense, e.g. bone), then standardised with INPUT_MEAN / INPUT_STD.
"""

from __future__ import annotations

MODEL_SIZE = 512
INPUT_CHANNELS = 1
INPUT_MEAN = 0.5
INPUT_STD = 0.25
# Training copies are stored as 16-bit PNG: display value in [0, 1] times this.
TRAINING_COPY_MAX = 65535

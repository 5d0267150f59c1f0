"""The pure domain core: pixels to the model frame, the four-region split, quantification, RALE, overlays.

No I/O and no servers: services, training, evaluation and the report call the same functions, so their
numbers agree (docs/architecture.md).
"""

"""The shared service runtime: settings, logging, metrics, gRPC serving, Kafka, Triton, blobs.

Every service of the mesh is built from these parts, so each concern is done one way.
"""

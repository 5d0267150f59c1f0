"""The Ingest call's client stream, stated once: the header (with the file's size) first, then the file
in 1 MiB data messages. Every sender uses it: the CLI and client library (``cxrmesh.client``) and the
DICOM gateway (``services/gateway/handoff.py``), which cannot import the client (same layer)."""

from __future__ import annotations

from collections.abc import Iterator

from cxrmesh.v1 import ingestion_pb2

CHUNK = 1 << 20  # bytes per data message: well under gRPC's 4 MiB default message limit


def ingest_chunks(data: bytes, header: ingestion_pb2.IngestHeader) -> Iterator[ingestion_pb2.IngestChunk]:
    """The Ingest stream of ``data``: ``header`` (its ``total_bytes`` set) first, then the pieces."""
    header.total_bytes = len(data)
    yield ingestion_pb2.IngestChunk(header=header)
    for i in range(0, len(data), CHUNK):
        yield ingestion_pb2.IngestChunk(data=data[i : i + CHUNK])

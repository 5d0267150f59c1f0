"""Content-addressed blob store for pixel data, masks and DICOM outputs.

Kafka messages carry ``BlobRef`` references, never pixels. A blob is named by the SHA-256 of its
bytes, so writing the same content twice is a no-op (idempotent producers) and a reader can verify
what it got. The local filesystem store is the default; ``s3://`` uses an S3-compatible service
(boto3, installed with the ``s3`` extra) for clusters where services run on different nodes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from cxrmesh.v1 import common_pb2


class BlobError(Exception):
    """Base of the blob store errors."""


class BlobNotFound(BlobError):
    pass


class BlobCorrupt(BlobError):
    """The bytes read back do not hash to the reference: storage lost or altered them."""


class BlobStore(Protocol):
    def put(self, data: bytes, media_type: str) -> common_pb2.BlobRef: ...

    def get(self, ref: common_pb2.BlobRef) -> bytes: ...

    def ping(self) -> bool: ...


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(ref: common_pb2.BlobRef, data: bytes) -> bytes:
    if ref.sha256 and _digest(data) != ref.sha256:
        raise BlobCorrupt(f"blob {ref.sha256[:12]}… does not match its digest")
    return data


class LocalBlobStore:
    """Blobs under ``root/sha256/ab/<digest>``; written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def put(self, data: bytes, media_type: str) -> common_pb2.BlobRef:
        digest = _digest(data)
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        uri = path.resolve().as_uri()
        return common_pb2.BlobRef(uri=uri, sha256=digest, size_bytes=len(data), media_type=media_type)

    def get(self, ref: common_pb2.BlobRef) -> bytes:
        path = self._path(ref.sha256) if ref.sha256 else Path(url2pathname(urlparse(ref.uri).path))
        try:
            return _check(ref, path.read_bytes())
        except FileNotFoundError as exc:
            raise BlobNotFound(f"blob {ref.sha256[:12]}… is not in {self.root}") from exc

    def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)


class S3BlobStore:
    """Blobs in ``s3://bucket/prefix/sha256/<digest>`` (any S3-compatible endpoint)."""

    def __init__(self, uri: str, endpoint_url: str | None = None):
        try:
            import boto3
        except ImportError as exc:  # optional dependency
            raise BlobError("s3:// blob stores need boto3: pip install 'cxrmesh[s3]'") from exc
        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("CXRMESH_S3_ENDPOINT"))

    def _key(self, digest: str) -> str:
        return "/".join(p for p in (self.prefix, "sha256", digest) if p)

    def put(self, data: bytes, media_type: str) -> common_pb2.BlobRef:
        digest = _digest(data)
        key = self._key(digest)
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=media_type)
        return common_pb2.BlobRef(
            uri=f"s3://{self.bucket}/{key}", sha256=digest, size_bytes=len(data), media_type=media_type
        )

    def get(self, ref: common_pb2.BlobRef) -> bytes:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(ref.sha256))["Body"].read()
        except self._s3.exceptions.NoSuchKey as exc:
            raise BlobNotFound(f"blob {ref.sha256[:12]}… is not in s3://{self.bucket}") from exc
        return _check(ref, body)

    def ping(self) -> bool:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return True
        except Exception:  # any failure means "not reachable" for a health probe
            return False


def open_blob_store(uri: str) -> BlobStore:
    """``file:///path`` (default) or ``s3://bucket/prefix``."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalBlobStore(Path(url2pathname(parsed.path)) if parsed.scheme else Path(uri))
    if parsed.scheme == "s3":
        return S3BlobStore(uri)
    raise BlobError(f"unsupported blob store {uri!r}: use file:///path or s3://bucket/prefix")


NPY = "application/x-npy"


def array_bytes(array: np.ndarray) -> bytes:
    """.npy bytes (dtype and shape travel with the data, no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def bytes_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)

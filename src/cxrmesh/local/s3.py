"""A local S3 endpoint (moto) that keeps its objects across its own restart: the durable store of
the local broker.

Why: Tansu's ``memory://`` engine loses every message and committed offset when the broker dies;
its ``s3://`` engine keeps them in object storage, and here that storage is moto, the AWS
emulator from PyPI (``moto[server]``, in the mesh-local extra). Plain ``moto_server`` holds
everything in memory, and its request recorder (``MOTO_ENABLE_RECORDING`` plus a replay call) is
not safe for Tansu: it logs each request *before* handling it, from many threads, so two
conditional writes racing on one object (``meta.json``, a watermark) can be logged in the other
order, and a replay then refuses every later write to that object. So this module runs moto's
own WSGI application behind a small journal instead (``python -m cxrmesh.local.s3``):

* every write (PUT/POST/DELETE) is handled under one lock, and only once it succeeded the
  object's resulting state (its bytes and content type, or its absence) is appended to
  ``<data>/journal.jsonl`` and flushed, before the reply goes out. An acknowledged write is in
  the file when the client learns of it, so killing the server (even SIGKILL) loses nothing a
  client was told was written; an operating-system crash can lose the unflushed page cache.
* at start the journal is compacted (the last state of each object wins) and replayed into the
  empty moto before the port opens, so "answers on its port" means "holds all its data".
* it listens on loopback only, and refuses a request that does not name this endpoint's access
  key id (generated once, kept 0600 in ``<data>/credentials.json``, never logged). That guards
  against a process talking to the wrong local endpoint; it is not authentication (moto checks
  no signature, and the local broker itself is plaintext on loopback).
* moto's ``/moto-api`` (which can reset all state behind the journal's back) is refused.

Only path-style requests are supported (Tansu's default with an explicit endpoint); a multipart
upload is journalled when it completes (and comes back as one object, with a plain MD5 ETag).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrmesh.local import process
from cxrmesh.local.ports import free_port
from cxrmesh.local.secret_files import keep_secret

__all__ = [
    "LocalS3",
    "S3Error",
    "S3StartError",
    "S3Target",
    "S3UnavailableError",
    "check_bucket",
    "credentials",
    "ensure_bucket",
    "s3_server_command",
]

log = logging.getLogger(__name__)

BUCKET = "tansu"
REGION = "us-east-1"
JOURNAL = "journal.jsonl"
CREDENTIALS = "credentials.json"
_ACCOUNT = "123456789012"  # moto's default account: every request lands in one account
_WRITES = frozenset({"PUT", "POST", "DELETE"})
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


class S3Error(RuntimeError):
    """Base of the local S3 errors."""


class S3StartError(S3Error):
    """The local S3 server exited or did not answer in time."""


class S3UnavailableError(S3Error):
    """An S3 endpoint did not answer, or refused this client, or has no such bucket."""


@dataclass(frozen=True)
class S3Target:
    """Where a Tansu ``s3://`` engine keeps its data, and how it signs in (the secret is not in repr)."""

    endpoint: str  # http://127.0.0.1:PORT
    access_key_id: str
    secret_access_key: str = field(repr=False)
    bucket: str = BUCKET
    region: str = REGION

    @property
    def url(self) -> str:
        """The ``--storage-engine`` value."""
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        """Tansu's object-store settings (it reads ``AWS_*`` from its environment).

        Both endpoint spellings are set, so an ``AWS_ENDPOINT_URL`` inherited from the caller's
        shell cannot point the broker at another store.
        """
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true" if self.endpoint.startswith("http://") else "false",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        }


def credentials(data_dir: Path) -> tuple[str, str]:
    """This endpoint's access key id and secret: made once (0600), then reused so a restarted
    broker still signs in."""
    path = Path(data_dir) / CREDENTIALS

    def make() -> str:
        key = "AKIA" + secrets.token_hex(8).upper()
        return json.dumps({"access_key_id": key, "secret_access_key": secrets.token_urlsafe(30)})

    keep_secret(path, make)
    data = json.loads(path.read_text())
    return data["access_key_id"], data["secret_access_key"]


def s3_server_command(data_dir: Path, port: int, host: str = "127.0.0.1") -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of the journalled moto server on host:port keeping its data in
    ``data_dir`` (the credentials file is made here if missing; no secret is in argv or env)."""
    data_dir = Path(data_dir).resolve()
    credentials(data_dir)
    argv = [
        sys.executable,
        "-m",
        "cxrmesh.local.s3",
        "--host",
        host,
        "--port",
        str(port),
        "--data",
        str(data_dir),
    ]
    return argv, {"PYTHONUNBUFFERED": "1", "MOTO_ACCOUNT_ID": _ACCOUNT}


def _request(target: S3Target, method: str, path: str, timeout_s: float) -> int:
    """HTTP status of a SigV4-signed request (botocore, a moto dependency, signs it); 0 = no answer."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = target.endpoint.rstrip("/") + path
    request = AWSRequest(method=method, url=url, data=b"")
    request.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    SigV4Auth(Credentials(target.access_key_id, target.secret_access_key), "s3", target.region).add_auth(
        request
    )
    prepared = request.prepare()
    call = urllib.request.Request(url, data=None if method in ("GET", "HEAD") else b"", method=method)
    for name, value in prepared.headers.items():
        call.add_header(name, value)
    try:
        with urllib.request.urlopen(call, timeout=timeout_s) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def check_bucket(target: S3Target, timeout_s: float = 5.0) -> None:
    """Raise :class:`S3UnavailableError` unless the endpoint answers and holds the bucket."""
    status = _request(target, "HEAD", f"/{target.bucket}", timeout_s)
    if status == 0:
        raise S3UnavailableError(f"S3 endpoint {target.endpoint} is not reachable")
    if status in (401, 403):
        raise S3UnavailableError(f"S3 endpoint {target.endpoint} refused the access key (HTTP {status})")
    if status == 404:
        raise S3UnavailableError(f"S3 endpoint {target.endpoint} has no bucket {target.bucket!r}")
    if status >= 300:
        raise S3UnavailableError(
            f"S3 endpoint {target.endpoint} answered HTTP {status} for {target.bucket!r}"
        )


def ensure_bucket(target: S3Target, timeout_s: float = 5.0) -> bool:
    """Create the bucket if missing; True once it exists (False: the endpoint is not up yet)."""
    status = _request(target, "HEAD", f"/{target.bucket}", timeout_s)
    if status == 404:
        status = _request(target, "PUT", f"/{target.bucket}", timeout_s)
        if status == 409:  # created meanwhile
            status = 200
    return 200 <= status < 300


class LocalS3(process.StartStop):
    """The journalled moto server on 127.0.0.1 with one bucket; a context manager, or start()/stop().

    Its data (journal and credentials) lives in ``data_dir``, so ``start()`` after ``stop()`` or a
    SIGKILL (:meth:`kill`) serves the same objects, on the same port. ``port`` None picks a free one.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, bucket: str = BUCKET, log_path: Path | None = None
    ):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or 0
        self.bucket = bucket
        self.log_path = log_path or self.data_dir / "s3.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> S3Target:
        key, secret = credentials(self.data_dir)
        return S3Target(self.endpoint, key, secret, self.bucket)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ready(self) -> bool:
        """True once the server answers and the bucket exists (it is created here if missing)."""
        return self.running and ensure_bucket(self.target, timeout_s=2.0)

    def start(self, timeout_s: float = 60) -> None:
        """Start (or start again, same port and data) and wait until ready; raises :class:`S3StartError`."""
        if self.running:
            return
        self.port = self.port or free_port()
        argv, env = s3_server_command(self.data_dir, self.port)
        self._proc = process.spawn(argv, self.log_path, env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                break
            if self.ready():
                log.info("local s3 ready", extra={"endpoint": self.endpoint, "log": str(self.log_path)})
                return
            time.sleep(0.1)
        exited = not self.running
        self.stop()
        raise S3StartError(
            f"local S3 at {self.endpoint} {'exited' if exited else 'was not ready'} within {timeout_s}s; "
            f"log tail:\n{process.log_tail(self.log_path)}"
        )

    def kill(self) -> None:
        """SIGKILL the server's process group (for fault tests): no goodbye, the journal is all."""
        proc, self._proc = self._proc, None
        process.kill_group(proc)

    def stop(self) -> None:
        """SIGTERM, wait, then kill; idempotent. Nothing is lost either way (see the module docstring)."""
        proc, self._proc = self._proc, None
        process.stop(proc, "local s3")


# ---------------------------------------------------------------- the server process


class Journal:
    """The append-only record of every acknowledged write: one JSON line per object state."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def load(self) -> list[dict[str, Any]]:
        """The compacted entries: bucket operations in order, then each object's last state.

        A torn last line (the server was killed while writing it) was never acknowledged: dropped.
        """
        if not self.path.exists():
            return []
        buckets: dict[str, list[dict[str, Any]]] = {}
        objects: dict[str, dict[str, Any]] = {}
        lines = self.path.read_bytes().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                if number == len(lines):
                    log.warning("journal ends in a torn line (a write never acknowledged): dropped")
                    continue
                raise S3Error(f"journal {self.path} line {number} is unreadable") from None
            if entry["op"] == "object":
                objects.pop(entry["path"], None)  # keep first-write order of the survivors
                if entry.get("body") is not None:
                    objects[entry["path"]] = entry
                continue
            name, plain = entry["path"].strip("/"), not entry["query"]
            if plain and entry["method"] == "PUT":  # (re)created: what came before is gone
                buckets[name] = [entry]
            elif plain and entry["method"] == "DELETE":
                buckets.pop(name, None)
            else:  # a bucket setting: the last call of each kind wins
                calls = buckets.setdefault(name, [])
                calls[:] = [
                    c for c in calls if (c["method"], c["query"]) != (entry["method"], entry["query"])
                ]
                calls.append(entry)
        return [c for calls in buckets.values() for c in calls] + list(objects.values())

    def rewrite(self, entries: Iterable[dict[str, Any]]) -> None:
        """Replace the journal by ``entries`` atomically (write, fsync, rename), then open it to append."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".journal-")
        with os.fdopen(fd, "w") as fh:
            for entry in entries:
                fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a")  # noqa: SIM115 - held open for the server's life

    def append(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._fh.flush()  # in the OS before the reply: a killed server loses nothing acknowledged

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _object_path(raw_path: str) -> bool:
    """True for ``/bucket/key`` (an object), False for ``/`` or ``/bucket`` (service or bucket)."""
    return "/" in raw_path.strip("/")


class JournalledApp:
    """WSGI middleware around moto: checks the access key, serialises writes and journals them."""

    def __init__(self, app: Callable[..., Any], journal: Journal, access_key_id: str):
        self.app = app
        self.journal = journal
        self.access_key_id = access_key_id
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
        path, _, query = raw.partition("?")
        if path.startswith("/moto-api"):
            return _error(start_response, "403 Forbidden", "AccessDenied", "the moto API is disabled here")
        if not self._names_our_key(environ, query):
            return _error(start_response, "403 Forbidden", "InvalidAccessKeyId", "unknown access key id")
        if environ.get("REQUEST_METHOD") not in _WRITES:
            return self.app(environ, start_response)
        with self._lock:
            status, headers, body = _call(self.app, environ)
            if status.startswith("2"):
                for entry in self._entries(environ["REQUEST_METHOD"], path, query, environ):
                    self.journal.append(entry)
        start_response(status, headers)
        return [body]

    def _names_our_key(self, environ: Mapping[str, Any], query: str) -> bool:
        found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        if found is None:  # a presigned URL carries it in the query
            credential = urllib.parse.parse_qs(query).get("X-Amz-Credential", [""])[0]
            return credential.split("/", 1)[0] == self.access_key_id
        return found.group(1) == self.access_key_id

    def _entries(
        self, method: str, path: str, query: str, environ: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """What to journal for a successful write: each touched object's state after it, or the
        bucket call itself."""
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        body = environ.get("cxrmesh.body", b"")
        if not _object_path(path):
            if method == "POST" and "delete" in params:  # DeleteObjects: each key is gone
                bucket = path.strip("/")
                paths = [f"/{bucket}/{_quote(key)}" for key in _deleted_keys(body)]
                return [_object_state(self.app, p, self.access_key_id) for p in paths]
            encoded = base64.b64encode(body).decode()
            return [{"op": "bucket", "method": method, "path": path, "query": query, "body": encoded}]
        if "uploads" in params or ("uploadId" in params and method != "POST"):
            return []  # a multipart step: nothing visible until the upload completes (POST uploadId)
        return [_object_state(self.app, _quote(urllib.parse.unquote(path)), self.access_key_id)]


def _quote(path: str) -> str:
    """One spelling of an object path, whatever percent-encoding the client chose."""
    return urllib.parse.quote(path, safe="/~")


def _deleted_keys(body: bytes) -> list[str]:
    """The keys named in a DeleteObjects request body."""
    from xml.etree import ElementTree

    root = ElementTree.fromstring(body)
    return [el.text or "" for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Key"]


def _call(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a request through ``app`` to the end (body read up front, kept for the journal)."""
    from werkzeug.wrappers import Request

    body = Request(environ).get_data()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["cxrmesh.body"] = body
    seen: dict[str, Any] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[..., Any]:
        seen["status"], seen["headers"] = status, headers
        return lambda _data: None

    chunks = app(environ, start_response)
    try:
        content = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], content


def _as_owner(access_key_id: str) -> dict[str, str]:
    """Headers that make moto treat an in-process call as the bucket owner's (it reads the key id
    from the Authorization header and checks no signature; anonymous reads are refused)."""
    scope = f"{access_key_id}/20000101/{REGION}/s3/aws4_request"
    return {"Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"}


def _object_state(app: Callable[..., Any], path: str, access_key_id: str) -> dict[str, Any]:
    """The object at ``path`` as moto now holds it (body None: it does not exist)."""
    from werkzeug.test import Client

    reply = Client(app).get(path, headers=_as_owner(access_key_id), base_url="http://127.0.0.1")
    if reply.status_code == 200:
        return {
            "op": "object",
            "path": path,
            "type": reply.headers.get("Content-Type", "binary/octet-stream"),
            "body": base64.b64encode(reply.get_data()).decode(),
        }
    return {"op": "object", "path": path, "body": None}


def replay(app: Callable[..., Any], entries: Iterable[dict[str, Any]], access_key_id: str) -> int:
    """Apply journal entries to an empty moto; the number of objects restored."""
    from werkzeug.test import Client

    client = Client(app)
    owner = _as_owner(access_key_id)
    restored = 0
    for entry in entries:
        body = base64.b64decode(entry["body"]) if entry.get("body") is not None else b""
        if entry["op"] == "bucket":
            url = entry["path"] + (f"?{entry['query']}" if entry["query"] else "")
            reply = client.open(
                url, method=entry["method"], data=body, headers=owner, base_url="http://127.0.0.1"
            )
        else:
            headers = {**owner, "Content-Type": entry.get("type", "binary/octet-stream")}
            reply = client.put(entry["path"], data=body, headers=headers, base_url="http://127.0.0.1")
            restored += 1
        if reply.status_code >= 300:
            raise S3Error(f"journal replay of {entry['op']} {entry['path']} failed: HTTP {reply.status_code}")
    return restored


def _error(start_response: Callable[..., Any], status: str, code: str, message: str) -> list[bytes]:
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body.encode()]


def serve(host: str, port: int, data_dir: Path) -> None:
    """Restore the journal into moto, then serve on host:port until SIGTERM/SIGINT."""
    os.environ.setdefault("MOTO_ACCOUNT_ID", _ACCOUNT)
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        """No access log (a line per fetch); server errors still show."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if str(code).startswith("5"):
                super().log_request(code, size)

    key, _secret = credentials(data_dir)
    started = time.monotonic()
    moto_app = DomainDispatcherApplication(create_backend_app)
    journal = Journal(Path(data_dir) / JOURNAL)
    entries = journal.load()
    restored = replay(moto_app, entries, key)
    journal.rewrite(entries)
    server = make_server(
        host, port, JournalledApp(moto_app, journal, key), threaded=True, request_handler=QuietHandler
    )
    log.info(
        "local s3 serving on %s:%d: %d objects restored from the journal in %.2f s",
        host,
        port,
        restored,
        time.monotonic() - started,
    )

    def stop(_signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        journal.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxrmesh.local.s3", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="journal and credentials folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    serve(args.host, args.port, args.data)


if __name__ == "__main__":
    main()

"""A locked-down local Orthanc (Debian's ``/usr/sbin/Orthanc``) as a stand-in PACS, for the tests and
``cxrmesh up --pacs``.

Why a real PACS: the gateway (DICOM in) and the PACS sender (results back) must be seen working
against a Storage SCP/SCU that is not ours, with its association rules, not against a mock.

Closed by default, like every other port of the mesh:

* REST: loopback only (``RemoteAccessAllowed`` false) and still HTTP basic authentication, one user
  whose password is made once and kept 0600 next to the config (the config, which must hold the
  password in plain text for Orthanc, is 0600 too). No Lua over REST, no writes to the file system,
  no WebDAV, no plugins.
* DICOM: only the known ``modalities`` may associate (``DicomAlwaysAllow*`` false), each from its
  own host (``DicomCheckModalityHost``: give hosts as IP addresses, e.g. 127.0.0.1) and only for
  C-ECHO and C-STORE; the called AE title must be ours (``DicomCheckCalledAet``). Orthanc 1.10 has no
  option to bind its DICOM port to loopback: the host check is what keeps other machines out.

Auto-routing (``autoroute_to``, a modality name): a Lua ``OnStoredInstance`` sends every newly stored
radiograph (Modality CR or DX) to that modality, which is how the PACS hands radiographs to cxrmesh.
Results (SEG, SR) are not forwarded, nor is anything that came from the target itself (no loops).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from cxrmesh.local.ports import free_port
from cxrmesh.local.process import StartStop, log_tail, spawn, stop
from cxrmesh.local.secret_files import keep_secret

__all__ = ["ORTHANC_BINARY", "LocalOrthanc", "OrthancAPI", "OrthancError", "autoroute_lua"]

ORTHANC_BINARY = "/usr/sbin/Orthanc"
INSTALL_HINT = "install Orthanc: `apt-get install orthanc` (Debian package)"
USER = "cxrmesh"
FORWARDED_MODALITIES = ("CR", "DX")  # radiographs; never SEG/SR (our own results)
_AE_TITLE = re.compile(r"^[A-Za-z0-9 _.\-]{1,16}$")  # no quotes or backslashes: safe in JSON and Lua
_MODALITY_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
log = logging.getLogger(__name__)


class OrthancError(RuntimeError):
    """An Orthanc REST call that failed: the HTTP status (None: no answer) and Orthanc's message."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"Orthanc answered {status}: {message}" if status else f"Orthanc: {message}")
        self.status = status
        self.message = message


def _check_ae(ae_title: str) -> str:
    if not _AE_TITLE.match(ae_title) or ae_title != ae_title.strip():
        raise ValueError(f"not a usable AE title: {ae_title!r} (1-16 letters, digits, space, _ . -)")
    return ae_title


def autoroute_lua(modality: str, target_ae: str) -> str:
    """The Lua script that forwards new CR/DX instances to ``modality`` (whose AE is ``target_ae``)."""
    if not _MODALITY_NAME.match(modality):
        raise ValueError(f"not a usable modality name: {modality!r}")
    _check_ae(target_ae)
    wanted = ", ".join(f'["{m}"] = true' for m in FORWARDED_MODALITIES)
    return f"""-- written by cxrmesh.local.orthanc: forward new radiographs to the mesh
local TARGET = "{modality}"
local TARGET_AET = "{target_ae}"
local FORWARDED = {{ {wanted} }}

function OnStoredInstance(instanceId, tags, metadata, origin)
  if not FORWARDED[tags["Modality"]] then
    return  -- not a radiograph (e.g. a SEG or SR of ours)
  end
  local from = (origin and origin["RemoteAet"]) or metadata["RemoteAET"]
  if from == TARGET_AET then
    return  -- came from the target itself: sending it back would loop
  end
  SendToModality(instanceId, TARGET)
end
"""


class LocalOrthanc(StartStop):
    """Orthanc in ``folder`` (config, password, storage, log), on loopback ports.

    ``modalities``: name -> (AE title, host, port) of the peers allowed to C-ECHO/C-STORE, and the
    ones Orthanc can send to; ``autoroute_to``: one of those names, to forward radiographs to."""

    def __init__(
        self,
        folder: Path,
        ae_title: str = "ORTHANC",
        dicom_port: int | None = None,
        http_port: int | None = None,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        autoroute_to: str | None = None,
    ):
        self.folder = Path(folder).absolute()
        self.ae_title = _check_ae(ae_title)
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.modalities = dict(modalities or {})
        for name, (aet, _host, _port) in self.modalities.items():
            if not _MODALITY_NAME.match(name):
                raise ValueError(f"not a usable modality name: {name!r}")
            _check_ae(aet)
        if autoroute_to is not None and autoroute_to not in self.modalities:
            raise ValueError(f"autoroute_to {autoroute_to!r} is not one of the modalities")
        self.autoroute_to = autoroute_to
        self.log = self.folder / "orthanc.log"
        self.config_path = self.folder / "orthanc.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def user(self) -> str:
        return USER

    @property
    def password_file(self) -> Path:
        return self.folder / "orthanc.password"

    def api(self, timeout_s: float = 30.0) -> OrthancAPI:
        """A REST client signed in as :attr:`user`."""
        return OrthancAPI(self.url, self.user, self.password_file.read_text().strip(), timeout_s)

    def config(self, password: str) -> dict[str, Any]:
        """Orthanc's configuration (see the module docstring for why each security option)."""
        storage = str(self.folder / "storage")
        config: dict[str, Any] = {
            "Name": "cxrmesh-pacs",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: password},
            "SslEnabled": False,  # loopback only: no network hop to protect
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": {
                name: {
                    "AET": aet,
                    "Host": host,
                    "Port": port,
                    "AllowEcho": True,
                    "AllowStore": True,
                    "AllowFind": False,
                    "AllowFindWorklist": False,
                    "AllowGet": False,
                    "AllowMove": False,
                    "AllowStorageCommitment": False,
                }
                for name, (aet, host, port) in self.modalities.items()
            },
            "OrthancPeers": {},
            "DeidentifyLogs": True,
            "LogExportedResources": False,
            "SaveJobs": False,
            "LuaScripts": [],
        }
        if self.autoroute_to is not None:
            config["LuaScripts"] = [str(self.folder / "autoroute.lua")]
        return config

    def write_config(self) -> Path:
        """Make the password (once), write the Lua script and the config (0600); the config's path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        keep_secret(self.password_file, lambda: secrets.token_urlsafe(24))
        if self.autoroute_to is not None:
            target_ae = self.modalities[self.autoroute_to][0]
            (self.folder / "autoroute.lua").write_text(autoroute_lua(self.autoroute_to, target_ae))
        password = self.password_file.read_text().strip()
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.config(password), out, indent=2)
        os.chmod(self.config_path, 0o600)  # an older file keeps its mode through O_TRUNC
        return self.config_path

    def command(self) -> list[str]:
        """Write the config (see :meth:`write_config`) and return the argv that runs Orthanc on it (for a
        supervisor that spawns it in its own session, as ``cxrmesh up --pacs`` does)."""
        binary = ORTHANC_BINARY if Path(ORTHANC_BINARY).is_file() else shutil.which("Orthanc")
        if binary is None:
            raise FileNotFoundError(f"Orthanc is not installed; {INSTALL_HINT}")
        return [binary, str(self.write_config())]

    def ready(self) -> bool:
        """Its REST API answers, signed in, and its DICOM port accepts connections (Orthanc opens the
        DICOM server after the REST API: a sender calling in between would be refused)."""
        try:
            self.api(timeout_s=2.0).system()
        except OrthancError:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=2.0):
                return True
        except OSError:
            return False

    def start(self, timeout_s: float = 60.0) -> None:
        """Start Orthanc and wait until its REST API answers (signed in)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = spawn(self.command(), self.log, cwd=self.folder)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"Orthanc exited with {code} while starting:\n{log_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Orthanc did not answer in {timeout_s:.0f} s:\n{log_tail(self.log)}")
            time.sleep(0.2)
        log.info("Orthanc %s serves DICOM on %d, REST on %s", self.ae_title, self.dicom_port, self.url)

    def stop(self) -> None:
        """SIGTERM (Orthanc's clean shutdown), then SIGKILL after the grace period; idempotent."""
        stop(self.proc, "orthanc")
        self.proc = None


class OrthancAPI:
    """The few Orthanc REST calls the tests and the local stack make, signed in with basic auth."""

    def __init__(self, url: str, user: str, password: str, timeout_s: float = 30.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._session = requests.Session()
        self._session.auth = (user, password)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            try:
                reply = self._session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
            except requests.ConnectionError:
                # Orthanc drops idle keep-alive connections, and requests does not resend a POST over
                # one found closed: once more on a new connection (every call here is safe to repeat:
                # reads, lookups, and stores that Orthanc keeps once per SOP Instance UID)
                self._session.close()
                reply = self._session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as err:
            raise OrthancError(
                None, f"{method} {path.split('/')[1]}: no answer ({type(err).__name__})"
            ) from err
        if not reply.ok:
            raise OrthancError(reply.status_code, _message(reply))
        return reply

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    def system(self) -> dict[str, Any]:
        return self._json("GET", "/system")

    def studies(self) -> list[str]:
        return self._json("GET", "/studies")

    def study(self, study_id: str) -> dict[str, Any]:
        return self._json("GET", f"/studies/{study_id}")

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/studies/{study_id}/instances")

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        return self._json("GET", f"/instances/{instance_id}/simplified-tags")

    def instance_file(self, instance_id: str) -> bytes:
        return self._call("GET", f"/instances/{instance_id}/file").content

    def upload(self, data: bytes) -> str:
        """Store a DICOM file (POST /instances); its Orthanc instance id."""
        reply = self._json("POST", "/instances", data=data, headers={"Content-Type": "application/dicom"})
        return str(reply["ID"])

    def find_study(self, study_instance_uid: str) -> str | None:
        """The Orthanc id of the study with this Study Instance UID, or None."""
        found = self._json("POST", "/tools/lookup", data=study_instance_uid)
        return next((str(r["ID"]) for r in found if r.get("Type") == "Study"), None)

    def store_to(self, modality: str, ids: list[str]) -> dict[str, Any]:
        """C-STORE these resources (any level) to a configured modality, synchronously."""
        body = {"Resources": list(ids), "Synchronous": True}
        return self._json("POST", f"/modalities/{modality}/store", json=body)


def _message(reply: requests.Response) -> str:
    """Orthanc's own words for an error (its JSON ``Message``/``Details``), else the HTTP reason."""
    try:
        body = reply.json()
    except ValueError:
        return reply.reason or "error"
    if not isinstance(body, dict):
        return reply.reason or "error"
    parts = [str(body[k]) for k in ("Message", "Details") if body.get(k)]
    return ": ".join(parts) or reply.reason or "error"

"""TLS to a Milvus server: the server's CA, and a client certificate when Milvus asks for one (mTLS).

pymilvus takes file paths: ``server_pem_path`` alone for one-way TLS (the CA that signed the
server's certificate), or ``ca_pem_path`` + ``client_pem_path`` + ``client_key_path`` for mutual TLS
(Milvus ``tls.mode: 2``). :class:`MilvusTLS` states that choice once and checks the files at start-up.
The token (``user:password`` or an API key) is separate: it is a secret, TLS files are not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MilvusTLS:
    """TLS of the Milvus connection; ``server_name`` overrides the name checked in its certificate."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("Milvus mutual TLS needs both a client certificate and its key file")
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"Milvus TLS file {path} does not exist")

    @property
    def mutual(self) -> bool:
        return self.cert_file is not None

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments pymilvus' ``MilvusClient`` receives for this TLS mode."""
        kwargs: dict[str, Any] = {"secure": True}
        if self.mutual:
            kwargs |= {
                "ca_pem_path": str(self.ca_file),
                "client_pem_path": str(self.cert_file),
                "client_key_path": str(self.key_file),
            }
        else:
            kwargs["server_pem_path"] = str(self.ca_file)
        if self.server_name:
            kwargs["server_name"] = self.server_name
        return kwargs

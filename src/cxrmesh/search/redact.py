"""Keys never leave through logs: string literals in Milvus' messages are blanked, pymilvus' own included.

Milvus echoes the filter expression in its errors, and pymilvus logs those messages at ERROR; the
literals may be study or patient keys. :func:`redact` rewrites a message, :func:`install_log_redaction`
puts the same rewrite on pymilvus' logger (once per process).
"""

from __future__ import annotations

import logging
import re
import threading

# String literals within one line, except the file names of traceback lines (File "/path/x.py", line 1).
_LITERAL_RE = re.compile(r"(?<!File )\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'")
_PYMILVUS_LOGGER = "pymilvus.decorators"


def redact(text: str) -> str:
    """Milvus echoes filter expressions in its errors; their string literals may be keys."""
    return _LITERAL_RE.sub('"…"', text)


class _RedactLiterals(logging.Filter):
    """Rewrites pymilvus' ERROR lines (which quote the server's message) without string literals."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


_INSTALL_LOCK = threading.Lock()
_installed = False


def install_log_redaction() -> None:
    """Put the redacting filter on pymilvus' logger; idempotent and thread-safe."""
    global _installed
    with _INSTALL_LOCK:
        if not _installed:
            logging.getLogger(_PYMILVUS_LOGGER).addFilter(_RedactLiterals())
            _installed = True

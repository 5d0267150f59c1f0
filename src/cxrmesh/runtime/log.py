"""Structured logging: one JSON object per line (or plain text for a terminal).

Services log events with ``extra={...}`` fields. Patient data never reaches a log line by
construction: only pseudonymous counts, codes and timings are passed in ``extra`` — and the
formatter drops any field named like an identifier, as a second line of defence.

A line written while a span is current carries its ``trace_id`` and ``span_id`` (hex, as trace
back-ends show them), so a study's log lines are found from its trace and the other way round,
without a study key in either (``cxrmesh.runtime.tracing``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from opentelemetry import trace

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# fields that would identify a patient or study, even pseudonymously; never emitted
_FORBIDDEN = {"study_key", "patient_key", "patient_id", "patient_name", "accession", "study_uid", "sop_uid"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = trace.format_trace_id(span.trace_id)
            out["span_id"] = trace.format_span_id(span.span_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _FORBIDDEN and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", file: Path | None = None) -> None:
    """Configure the root logger once per process (services, not libraries, call this)."""
    handler: logging.Handler
    if file:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # highdicom logs every module it copies into an SR at INFO: tens of lines per study
    for noisy in ("kafka", "pymilvus", "urllib3", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

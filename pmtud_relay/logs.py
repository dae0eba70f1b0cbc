"""Structured logging to stderr: logfmt by default, JSON lines optional.

Messages are events: ``log.info("ready", extra={"kv": {...}})`` renders as
``ts=… level=info event=ready key=value …``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from pmtud_relay.report import logfmt

LOGGER_NAME = "pmtud_relay"


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        rec.update(getattr(record, "kv", {}))
        if record.exc_info:
            rec["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(rec, default=str) if self.as_json else logfmt(rec)


def setup(level: str = "info", fmt: str = "logfmt") -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    log.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt == "json"))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)

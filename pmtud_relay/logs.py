"""Structured logging to stderr: logfmt by default, JSON lines optional; never blocks the loop.

Messages are events: ``log.info("ready", extra={"kv": {...}})`` renders as
``ts=… level=info event=ready key=value …``.

The record is formatted in the caller's thread (cheap string work) and put on a bounded
queue; a :class:`logging.handlers.QueueListener` thread writes it to stderr. A stderr that
blocks (a stalled journald, a full pipe) therefore never stalls the event loop: when the
queue is full, lines are dropped and counted (:func:`dropped`), and the next line that fits
is preceded by a ``log_lines_dropped`` warning.

When stderr is connected to the journal (``$JOURNAL_STREAM`` names it), each line starts
with the syslog priority prefix (``<6>`` for info, sd-daemon(3)) so ``journalctl -p warning``
filters by level; the line itself is unchanged.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import TextIO

from pmtud_relay.report import logfmt

LOGGER_NAME = "pmtud_relay"
QUEUE_SIZE = 10000  # lines; beyond this, lines are dropped rather than blocking the loop

_SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool, journal: bool = False):
        super().__init__()
        self.as_json = as_json
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        rec = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": level,
            "event": record.getMessage(),
        }
        rec.update(getattr(record, "kv", {}))
        if record.exc_info:
            rec["error"] = self.formatException(record.exc_info).splitlines()[-1]
        line = json.dumps(rec, default=str) if self.as_json else logfmt(rec)
        if self.journal:
            line = f"<{_SYSLOG_PRIORITY.get(level, 6)}>{line}"
        return line


class _Passthrough(logging.Formatter):
    """The listener side: the line was formatted before it was queued."""

    def format(self, record: logging.LogRecord) -> str:
        return record.msg


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Formats in the caller's thread; drops (and counts) instead of blocking when full."""

    def __init__(self, q: queue.Queue):
        super().__init__(q)
        self.dropped = 0
        self._reported = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        line = self.format(record)
        out = logging.makeLogRecord({"msg": line, "levelno": record.levelno, "levelname": record.levelname})
        return out

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped != self._reported:
                note = logging.makeLogRecord({"msg": "log_lines_dropped", "levelno": logging.WARNING,
                                              "levelname": "WARNING",
                                              "kv": {"dropped": self.dropped - self._reported,
                                                     "total": self.dropped}})
                self.queue.put_nowait(self.prepare(note))
                self._reported = self.dropped
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Listener(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        # blocking: the writer thread is draining the queue. The ignore: typeshed's _QueueLike has no
        # put() (ours is a queue.Queue) and does not declare the private _sentinel (None in CPython).
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]


_listener: _Listener | None = None
_handler: _DroppingQueueHandler | None = None


def journal_stream(stream: TextIO, environ=os.environ) -> bool:
    """True if ``stream`` is the journal stream systemd connected ($JOURNAL_STREAM=dev:ino)."""
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> logging.Logger:
    """(Re)configure the ``pmtud_relay`` logger; safe to call again (e.g. on SIGHUP)."""
    global _listener, _handler
    stream = sys.stderr if stream is None else stream
    log = logging.getLogger(LOGGER_NAME)
    shutdown()
    log.handlers.clear()
    q: queue.Queue = queue.Queue(QUEUE_SIZE)
    handler = _DroppingQueueHandler(q)
    handler.setFormatter(_Formatter(fmt == "json", journal_stream(stream)))
    out = logging.StreamHandler(stream)
    out.setFormatter(_Passthrough())
    _listener = _Listener(q, out, respect_handler_level=False)
    _listener.start()
    _handler = handler
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
    return log


def set_level(level: str) -> None:
    """Change the level without rebuilding the handler (SIGHUP)."""
    logging.getLogger(LOGGER_NAME).setLevel(level.upper())


def dropped() -> int:
    """Lines dropped because the writer thread could not keep up."""
    return _handler.dropped if _handler is not None else 0


def flush() -> None:
    """Block until every queued line is written (tests, exit)."""
    if _listener is not None:
        _listener.stop()  # writes everything queued, then joins the thread
        _listener.start()


def shutdown() -> None:
    """Write what is queued and stop the writer thread."""
    global _listener, _handler
    log = logging.getLogger(LOGGER_NAME)
    if _handler is not None:
        log.removeHandler(_handler)
    if _listener is not None:
        _listener.stop()  # enqueues the sentinel and joins: everything queued is written
    _listener = None
    _handler = None


atexit.register(shutdown)


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)

"""Logs: logfmt/JSON lines written by a thread, a blocked stderr never blocks the caller."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import pytest

from pmtud_relay import logs


@pytest.fixture(autouse=True)
def _restore():
    yield
    logs.shutdown()


def test_logfmt_line_with_fields_and_error():
    out = io.StringIO()
    log = logs.setup("info", "logfmt", stream=out)
    log.info("ready", extra={"kv": {"interfaces": "eth0,eth1", "mode": "l2", "hint": "a b"}})
    log.debug("hidden")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.error("packet_path_error", exc_info=True, extra={"kv": {"total": 1}})
    logs.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("ts=")
    assert " level=info event=ready interfaces=eth0,eth1 mode=l2 hint=\"a b\"" in lines[0]
    assert "level=error event=packet_path_error total=1 error=\"ZeroDivisionError: division by zero\"" in lines[1]
    assert "Traceback" not in out.getvalue()


def test_json_lines():
    out = io.StringIO()
    log = logs.setup("debug", "json", stream=out)
    log.debug("relayed", extra={"kv": {"mtu": 1400, "interface": "eth0"}})
    logs.flush()
    rec = json.loads(out.getvalue())
    assert rec["level"] == "debug" and rec["event"] == "relayed" and rec["mtu"] == 1400
    assert rec["ts"].endswith("Z")


def test_set_level_and_setup_again():
    out = io.StringIO()
    log = logs.setup("warning", "logfmt", stream=out)
    log.info("a")
    logs.set_level("info")
    log.info("b")
    log2 = logs.setup("info", "json", stream=out)  # reconfigure: earlier lines are flushed first
    assert log2 is log and len(log.handlers) == 1
    log.info("c")
    logs.flush()
    lines = out.getvalue().splitlines()
    assert [line for line in lines if "event=a" in line] == []
    assert "event=b" in lines[0] and json.loads(lines[1])["event"] == "c"


class _BlockedStream(io.StringIO):
    """A stderr whose write blocks until released (a stalled journald or a full pipe)."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def write(self, s):
        self.release.wait()
        return super().write(s)


def test_blocked_stderr_never_blocks_the_caller_and_drops_are_counted(monkeypatch):
    monkeypatch.setattr(logs, "QUEUE_SIZE", 100)
    stream = _BlockedStream()
    log = logs.setup("info", "logfmt", stream=stream)
    t0 = time.monotonic()
    for i in range(1000):
        log.info("line", extra={"kv": {"i": i}})
    assert time.monotonic() - t0 < 2.0  # no call waited for the writer
    assert logs.dropped() >= 1000 - 100 - 1
    stream.release.set()
    logs.flush()
    log.warning("after")
    logs.flush()
    text = stream.getvalue()
    assert "event=log_lines_dropped" in text and "event=after" in text


def test_journald_priority_prefix_only_on_the_journal_stream(tmp_path, monkeypatch):
    path = tmp_path / "stderr"
    with open(path, "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        log = logs.setup("info", "logfmt", stream=f)
        log.warning("w")
        log.info("i")
        logs.flush()
    lines = path.read_text().splitlines()
    assert lines[0].startswith("<4>ts=") and lines[1].startswith("<6>ts=")
    out = io.StringIO()  # not the journal stream: no prefix
    logs.setup("info", "logfmt", stream=out).info("x")
    logs.flush()
    assert out.getvalue().startswith("ts=")

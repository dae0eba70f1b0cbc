"""The lab's teardown safety net: every live lab is torn down at exit or on SIGTERM.

``atexit`` and a SIGTERM -> SystemExit handler, installed only while a lab is up, only from
the main thread, only if SIGTERM had the default action; :func:`_register` and
:func:`_unregister` are called by :meth:`Lab.up <pmtud_relay.lab.topology.Lab.up>` and
:meth:`Lab.down <pmtud_relay.lab.topology.Lab.down>`.
"""

from __future__ import annotations

import atexit
import signal
import threading
from typing import Protocol


class Lab(Protocol):
    """What the safety net needs of a lab (pmtud_relay.lab.topology.Lab): that it can be torn
    down. A protocol, so that this module does not import the topology that imports it."""

    def down(self) -> None: ...


_LIVE: set[Lab] = set()
_LIVE_LOCK = threading.Lock()
_PREV_SIGTERM: object = None
_ATEXIT_DONE = False


def _atexit_cleanup() -> None:
    for lab in list(_LIVE):
        try:
            lab.down()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _sigterm_to_exit(signum, frame):  # pragma: no cover - exercised by hand
    raise SystemExit(128 + signum)


def _register(lab: Lab) -> None:
    global _PREV_SIGTERM, _ATEXIT_DONE
    with _LIVE_LOCK:
        if not _ATEXIT_DONE:
            atexit.register(_atexit_cleanup)
            _ATEXIT_DONE = True
        if not _LIVE and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    _PREV_SIGTERM = signal.signal(signal.SIGTERM, _sigterm_to_exit)
            except ValueError:
                pass
        _LIVE.add(lab)


def _unregister(lab: Lab) -> None:
    global _PREV_SIGTERM
    with _LIVE_LOCK:
        _LIVE.discard(lab)
        if not _LIVE and _PREV_SIGTERM is not None \
                and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) is _sigterm_to_exit:
                    signal.signal(signal.SIGTERM, _PREV_SIGTERM)  # type: ignore[arg-type]
            except ValueError:
                pass
            _PREV_SIGTERM = None

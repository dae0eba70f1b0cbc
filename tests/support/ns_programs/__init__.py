"""Programs the end-to-end tests run inside network namespaces, as real modules:
``python -m tests.support.ns_programs.NAME ARGS`` (argv from :func:`tests.support.netns.program`).

Each reads its arguments from argv (and stdin), prints its result (JSON where the test parses
it) on stdout and calls :func:`bounded` first, so a program the test lost track of still ends by
itself; the one daemon (relay_without_uvloop) is stopped by the namespace that spawned it.
The caller bounds each run too (subprocess timeout, or the lab/namespace teardown).
"""

from __future__ import annotations

import signal


def bounded(seconds: float) -> None:
    """End this process (SIGALRM, not caught) after ``seconds``, whatever it is doing."""
    signal.setitimer(signal.ITIMER_REAL, seconds)

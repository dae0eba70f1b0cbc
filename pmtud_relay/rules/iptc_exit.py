"""End the process without interpreter finalization once python-iptables has been loaded.

On Debian 11 (Python 3.9.2, python-iptables 1.2.0 from PyPI built against libxtables 1.8.7) a
process that used the iptables backend intermittently died with SIGSEGV *during interpreter
shutdown*, after its work was done and its output written (issue #14: ``rules remove`` printed
"iptables: removed", then "Exception ignored deletion of interned string failed: KeyError" and
the segfault, in 2 of 3 full Debian 11 test runs). That message comes from CPython freeing an
interned ``str`` it can no longer find in its table of interned strings: an object the
interpreter owns had been overwritten or released once too often. python-iptables gives C code
pointers into memory Python owns and leaves them behind: the extensions' global structs keep
``m`` and ``udata`` pointing into a match's ctypes buffers after the match is gone,
``xt_params`` points at a ctypes struct holding ctypes callbacks, and its ``exit_err`` callback
``longjmp``s out of a ctypes callback. Which one corrupts memory was not pinned down (the crash
did not reproduce outside full test runs), but every report was at shutdown, where the
interpreter tears those objects down in no fixed order.

So a command that loaded python-iptables ends with :func:`os._exit` once it is done: the
``atexit`` functions run (the log writer drains its queue), stdout and stderr are flushed, and
the teardown of modules and objects, where the crash happened, is skipped. Nothing is lost by
skipping it: the kernel releases memory and file descriptors, and the rules were committed
(or refused) before. A process that never imported python-iptables exits normally.
"""

from __future__ import annotations

import atexit
import os
import sys

#: The import name of python-iptables.
MODULE = "iptc"


def loaded() -> bool:
    """True once python-iptables has been imported in this process (by any path: the backend,
    ``missing_library`` or backend detection)."""
    return MODULE in sys.modules


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written
            pass


def exit_if_loaded(code: int) -> None:
    """If python-iptables is loaded, end the process now with ``code`` without interpreter
    finalization (see the module docstring); otherwise return and let it exit normally.
    Call it only where the process would exit anyway (the command line's entry point), never
    from code that runs inside another program (tests calling ``cli.main([...])``)."""
    if not loaded():
        return
    _flush()
    try:
        atexit._run_exitfuncs()  # what finalization would run first: logs.shutdown() among them
    finally:
        _flush()
        os._exit(code)

"""The event loop the daemon runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Callable


def run_event_loop(coro_factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run with uvloop when it is installed, else the stdlib loop.

    The uvloop loop is made for this thread only, never through the global event loop policy:
    pyroute2 0.8+ makes asyncio loops of its own in worker threads, for netlink sockets, which
    uvloop cannot open."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_factory())
        return
    if hasattr(uvloop, "run"):  # uvloop 0.18+
        uvloop.run(coro_factory())
        return
    # uvloop 0.17 (Debian 12): what asyncio.run does, with a uvloop loop
    loop = uvloop.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(coro_factory())
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

"""Reading the files the daemon is told to read (config, peer key file, peers files,
resolv.conf, hosts) without ever blocking on them or reading them without a bound.

``open()`` on a FIFO blocks until a writer appears, and ``read()`` on a FIFO, a character
device or an ever-growing file blocks or never ends. A config path replaced by a FIFO would
freeze start-up before any signal handler exists, and a SIGHUP reload (which runs on the event
loop) would stop relaying. So every such file is:

* opened with ``O_NONBLOCK`` (a FIFO opens at once, with or without a writer) and ``O_NOCTTY``;
* checked with ``fstat`` on the descriptor actually opened (no stat-then-open race) and refused
  unless it is a regular file — a FIFO, socket, device or directory never gets read;
* read up to a caller-given bound; a larger file is refused, not truncated.

Symbolic links are followed (no ``O_NOFOLLOW``): Kubernetes mounts ConfigMaps and Secrets as
symlinks into a ``..data`` directory, and the target is still checked to be a regular file.
"""

from __future__ import annotations

import errno
import os
import stat

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class FileRefused(ValueError):
    """A file that is not read: ``reason`` says why (missing, not a regular file, too large …)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", "a directory", …)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _not_regular(path: str, mode: int) -> FileRefused:
    return FileRefused(path, f"not a regular file ({kind(mode)})")


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking; (fd, fstat) of a regular file, else
    :class:`FileRefused`. The caller closes the descriptor."""
    try:
        pre = os.stat(path)  # refuse a device or FIFO before even opening it (open may have effects)
    except FileNotFoundError:
        raise FileRefused(path, "no such file") from None
    except PermissionError:
        raise FileRefused(path, "permission denied") from None
    except OSError as exc:
        raise FileRefused(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(pre.st_mode):
        raise _not_regular(path, pre.st_mode)
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise FileRefused(path, "no such file") from None
    except PermissionError:
        raise FileRefused(path, "permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket swapped in after the stat
            raise FileRefused(path, "not a regular file (a socket)") from None
        raise FileRefused(path, exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)  # what was opened, whatever was swapped in after the stat
    except OSError as exc:
        os.close(fd)
        raise FileRefused(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path, st.st_mode)
    return fd, st


def read_bounded(fd: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (one more than allowed tells "too large")."""
    chunks = []
    left = limit + 1
    while left > 0:
        try:
            chunk = os.read(fd, min(left, 65536))
        except BlockingIOError:  # cannot happen on a regular file; never wait for it anyway
            break
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_regular(path: str, limit: int) -> bytes:
    """The contents of regular file ``path`` (at most ``limit`` bytes, else FileRefused)."""
    fd, _ = open_regular(path)
    try:
        data = read_bounded(fd, limit)
    except OSError as exc:
        raise FileRefused(path, exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileRefused(path, f"larger than {limit} bytes")
    return data

"""The peer key file (``--peer-key-file``): one or two ``KEYID:HEXKEY`` lines.

The first key signs what this host sends; every listed key is accepted. The file is checked
before it is read (opened without blocking, pmtud_relay.safefile): a regular file (symlinks are
followed, as Kubernetes secret volumes need), owned by root or by the user the relay runs as, with
no access for others and not writable by its group (0600 or 0640). Rotation is a file change: the
daemon polls the file's identity (mtime, size, inode) and reloads it; a broken new file leaves the
running keys in place.

New key line: ``python3 -c 'import secrets; print("2:" + secrets.token_hex(32))'``.
"""

from __future__ import annotations

import os
import stat

from pmtud_relay.peers.wire import Keyring, parse_keyring
from pmtud_relay.safefile import FileRefused, open_regular, read_bounded

MAX_FILE = 4096  # bytes; two keys and comments fit many times over


class KeyFileError(ValueError):
    """The key file is missing, unsafe or malformed. The message names the file, never a key."""


def file_stamp(path: str) -> tuple[int, int, int, int] | None:
    """(mtime_ns, size, inode, device) of ``path`` (following symlinks), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def check_mode(path: str, st: os.stat_result, euid: int | None = None) -> None:
    euid = os.geteuid() if euid is None else euid
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if st.st_uid not in (0, euid):
        raise KeyFileError(f"{path}: owned by uid {st.st_uid}; it must belong to root or to uid {euid}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007 or mode & 0o020:
        raise KeyFileError(
            f"{path}: mode {mode:04o} lets others read it or its group change it; "
            f"use 0600 or 0640 (chmod 600 {path})"
        )


def load_keyring(path: str) -> Keyring:
    """Read and check the key file; KeyFileError says what is wrong."""
    try:
        fd, st = open_regular(path)  # never blocks: a FIFO is refused, not waited on
    except FileRefused as exc:
        raise KeyFileError(str(exc)) from None
    try:
        check_mode(path, st)
        data = read_bounded(fd, MAX_FILE)
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise KeyFileError(f"{path}: larger than {MAX_FILE} bytes; expected one or two KEYID:HEXKEY lines")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not ASCII text") from None
    try:
        return parse_keyring(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None

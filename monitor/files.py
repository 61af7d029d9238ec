"""File helpers shared by the whole package: atomic writes, the content hash, locks, names.

* :func:`atomic_writer` / :func:`write_bytes_atomic` / :func:`write_json_atomic`: a reader sees
  the old file or the new one, never half of either.
* :func:`sha256_hex` / :func:`file_sha256`: the one content hash (sha256, hex) of the project.
* :func:`exclusive_lock`: an advisory ``flock`` on a lock file, refused at once when held.
* :func:`check_name`: names that become a directory (reference stores), validated in one place.
* :func:`input_file` / :func:`output_file` / :func:`write_output`: a path the user names is a
  regular file (never a FIFO that blocks, a device that never ends, a symlink loop), and every
  error names it.

Standard library only, so any layer (settings included) can import it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from monitor.errors import InvalidInputError, MonitorError

# A name that is one safe path component: no separators, no control or shell-special
# characters, no leading dot (dot-files are a store's temporary and lock files). The same rule
# as the settings' stream and store names (monitor.config.NAME_PATTERN).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"


def check_name(name: object, *, what: str = "reference store name", field: str = "name") -> str:
    """``name`` if it matches :data:`NAME_PATTERN`, else InvalidInputError saying why."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInputError(
            f"invalid {what} {name!r}: use 1 to 64 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter, digit or '_'",
            field=field,
        )
    return name


def sha256_hex(data: bytes | bytearray | memoryview | str) -> str:
    """The content hash: sha256 of the bytes (text as UTF-8), hex."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return hashlib.sha256(raw).hexdigest()


def file_sha256(path: Path) -> str:
    """:func:`sha256_hex` of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``; fsync and rename it over ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON (sorted keys, finite numbers only) written atomically."""
    write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True, allow_nan=False).encode())


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Refused at once when someone else holds it, rather than waiting behind a build that may
    take hours: :class:`BlockingIOError` whose message names the holder (callers turn it into
    their own error). The lock file stays: removing it would let a third process lock a fresh
    inode while the second still holds the old one. The holder's pid is written into it for
    the error message. The kernel drops the lock when the holder dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            message = f"{path} is locked by another process ({holder})"
            raise BlockingIOError(exc.errno, message) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s stat (through symlinks); None when nothing is there; an error naming the path
    when it cannot be looked at (a symlink loop, no permission, a file as a directory)."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MonitorError(f"{path} is a symlink loop") from exc
        raise MonitorError(f"cannot use {path}: {exc.strerror or exc}") from exc


def input_file(path: Path, what: str = "input file") -> Path:
    """``path`` if it is a regular file (symlinks followed), else an error naming it and what
    it is: reading a FIFO blocks until a writer comes, a device like /dev/zero never ends."""
    found = _stat(path)
    if found is None:
        raise MonitorError(f"no such {what}: {path}")
    if not stat.S_ISREG(found.st_mode):
        raise MonitorError(f"{what} {path} is {_kind(found.st_mode)}, not a regular file")
    return path


def output_file(path: Path, what: str = "output file") -> Path:
    """``path`` if it is a regular file or nothing yet, else an error naming it and what it is
    (writing to a FIFO blocks until a reader comes; /dev/full fails only at the end)."""
    found = _stat(path)
    if found is not None and not stat.S_ISREG(found.st_mode):
        raise MonitorError(f"{what} {path} is {_kind(found.st_mode)}, not a regular file")
    return path


def write_output(path: Path, data: bytes, what: str = "output file") -> None:
    """``data`` written atomically to ``path`` (checked by :func:`output_file`); any error
    names the path."""
    output_file(path, what)
    try:  # through a symlink: the file it points to is replaced, not the link
        write_bytes_atomic(Path(os.path.realpath(path)), data)
    except OSError as exc:
        raise MonitorError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc

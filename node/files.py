"""Files Hedui writes, and the untrusted ones it reads whole: the one safe way to do either.

Every output file is written under a random temporary name in its own directory, created with
O_CREAT|O_EXCL|O_NOFOLLOW (a planted file or symlink is never opened, let alone followed),
mode 0600 unless the caller names a wider mode for a public file, fsync-ed, and renamed into
place atomically; the directory is fsync-ed too. A file that exists is replaced only when
the caller says so (`replace=True`, the CLI's `--force`); otherwise the final step is a hard
link, which fails rather than overwrite, so nothing can appear in between the check and the
write. Resumable outputs are rewritten the same way and then appended to through the same
descriptor (`rewrite`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

from node.errors import BadInput

PRIVATE: Final[int] = 0o600
PUBLIC: Final[int] = 0o644
_NOFOLLOW: Final[int] = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final[int] = getattr(os, "O_CLOEXEC", 0)
_NO_HARD_LINKS: Final[frozenset[int]] = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})
_CHUNK: Final[int] = 1 << 20


class OutputExists(BadInput):
    """An output file exists and the command was not asked to replace it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists; give --force to replace it")


def refuse_existing(path: Path, *, replace: bool) -> None:
    """Raise OutputExists when `path` exists (a dangling symlink included) and may not be replaced."""
    if not replace and os.path.lexists(path):
        raise OutputExists(Path(path))


@contextlib.contextmanager
def atomic(path: Path, *, replace: bool = False, mode: int = PRIVATE, binary: bool = False) -> Iterator[IO[Any]]:
    """An open temporary file that becomes `path` when the block ends (and vanishes if it raises)."""
    path = Path(path)
    refuse_existing(path, replace=replace)
    tmp, handle = _create_temporary(path, mode, binary)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path, replace=replace)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(path.parent)


def write_file(path: Path, data: str | bytes, *, replace: bool = False, mode: int = PRIVATE) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic(path, replace=replace, mode=mode, binary=isinstance(data, bytes)) as out:
        out.write(data)


def rewrite(path: Path, lines: Iterable[str], *, mode: int = PRIVATE) -> IO[str]:
    """Replace `path` atomically with `lines` and return it open for appending more (resumable outputs)."""
    path = Path(path)
    tmp, handle = _create_temporary(path, mode, binary=False)
    try:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(path.parent)
    return handle


def append(path: Path, data: bytes, *, mode: int = PRIVATE) -> None:
    """Append `data` to the regular file `path` (created `mode` if absent; a symlink is refused) and fsync."""
    # O_NONBLOCK: a FIFO planted there fails at once (no reader) instead of blocking; it is refused below.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadInput(f"{path} is not a regular file")
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path, *, max_bytes: int, what: str = "file") -> bytes:
    """SHA-256 of a regular file of at most `max_bytes` (devices, FIFOs and directories are refused)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(f"{what} {path} is not a regular file")
        too_big = BadInput(f"{what} {path} is larger than {max_bytes // (1 << 20)} MiB")
        if info.st_size > max_bytes:
            raise too_big
        digest, total = hashlib.sha256(), 0
        while chunk := f.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:  # it grew while we read
                raise too_big
            digest.update(chunk)
    return digest.digest()


def parse_toml(text: str) -> dict[str, Any]:
    """tomllib.loads for untrusted input: every failure is a tomllib.TOMLDecodeError.

    tomllib parses an integer literal with int(), which raises a plain ValueError for one longer
    than Python's 4300-digit limit (found by fuzzing); callers catch TOMLDecodeError only.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:
        raise tomllib.TOMLDecodeError("an integer has more digits than any setting can use") from None


def parse_json(text: str | bytes) -> Any:
    """json.loads for untrusted input: nesting too deep for the parser is a ValueError like any bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None


def _create_temporary(path: Path, mode: int, binary: bool) -> tuple[Path, IO[Any]]:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    try:
        return tmp, (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline=""))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise


def _publish(tmp: Path, path: Path, *, replace: bool) -> None:
    if replace:
        os.replace(tmp, path)  # a symlink at `path` is replaced, never followed
        return
    try:
        os.link(tmp, path)  # fails if anything is at `path`: never overwrites
    except FileExistsError:
        raise OutputExists(path) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        refuse_existing(path, replace=False)  # a file system without hard links: check, then rename
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Atomic file writes: a checkpoint is either the old file or the complete new one, never a torn mix.

Every failure of the file system (no space, a read-only folder, no permission, a file where a folder should be)
comes out as one :class:`~vimamba.errors.FileSystemError` naming the target path and the cause, with the previous
version of the file intact. Temporary files are named ``.NAME.HOST-PID-XXXXXXXX.tmp`` next to the target; one left by
a process that died mid-write (``kill -9``, power loss) is removed by the next write of the same target.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Union

import torch

from .errors import FileSystemError, file_system_error

__all__ = ["atomic_write", "atomic_torch_save", "ensure_folder", "remove_stale_temporaries",
           "remove_stale_temporaries_in", "same_file", "check_writable"]

PathLike = Union[str, os.PathLike]

# A temporary file whose writer cannot be checked (another host, or the older ``.NAME.XXXXXXXX.tmp`` naming) counts
# as abandoned once nothing has written to it for this long.
STALE_AFTER_SECONDS = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
_LOW_SPACE_BYTES = 1 << 20


def ensure_folder(folder: PathLike, what: str = "folder") -> Path:
    """Create ``folder`` (and its parents) if needed; a file in the way or an unwritable parent is one clear line."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileSystemError(errno.ENOTDIR, f"'{folder}' is a file, not a folder: choose another {what}",
                              str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise FileSystemError(e.errno, f"'{blocker}' is a file, not a folder: cannot create the folder "
                                               f"'{folder}'", str(folder)) from None
        raise file_system_error(e, folder, "create the folder") from None
    return folder


@contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success fsync it and rename it over ``path``.

    If the body raises (or the process dies) the target is untouched and the temporary file is removed (by the next
    write of the same target, if the process died). The file gets the permissions of the one it replaces, or those
    of any new file (0666 minus the umask), not the private 0600 of a temporary file. ``OSError`` from the body or the
    rename, and any error while the disk is full (torch reports those as ``unexpected pos``), become a
    :class:`~vimamba.errors.FileSystemError` naming ``path``.
    """
    path = Path(path)
    ensure_folder(path.parent)
    if path.is_dir():
        raise FileSystemError(errno.EISDIR, f"cannot write '{path}': it is a folder, not a file", str(path))
    remove_stale_temporaries(path)
    existed = path.exists()
    note = "the previous version is intact" if existed else ""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}-", suffix=".tmp",
                                        dir=path.parent)
    except OSError as e:
        raise file_system_error(e, path, note=note) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as e:
            raise file_system_error(e, path, note=note) from e
        except Exception as e:
            # torch's zip writer reports a failed write as "[enforce fail at inline_container.cc] unexpected pos",
            # raised while the real OSError is being handled: name that one
            cause = _os_error_behind(e)
            if cause is not None:
                raise file_system_error(cause, path, note=note) from e
            if _low_on_space(path.parent):
                raise file_system_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path,
                                        note=note) from e
            raise
        try:
            os.chmod(tmp, path.stat().st_mode & 0o7777 if existed else 0o666 & ~_umask())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise file_system_error(e, path, note=note) from e
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # a read-only remount mid-write: nothing more can be done here
            pass


def remove_stale_temporaries(path: PathLike) -> List[Path]:
    """Remove the temporary files that :func:`atomic_write` left next to ``path`` in processes that died.

    Only names of our own pattern for this target are considered: ``.NAME.HOST-PID-XXXXXXXX.tmp`` whose process
    no longer runs on this host, and (other hosts, or the older ``.NAME.XXXXXXXX.tmp`` naming) ones untouched for
    :data:`STALE_AFTER_SECONDS`. Returns the paths removed; a file that cannot be removed is left alone.
    """
    path = Path(path)
    return _remove_stale(path.parent, re.escape(path.name), f".{glob_escape(path.name)}.*.tmp")


def remove_stale_temporaries_in(folder: PathLike) -> List[Path]:
    """:func:`remove_stale_temporaries` for every target in ``folder`` (a run folder, when a run starts)."""
    return _remove_stale(Path(folder), r".+", ".*.tmp")


def _remove_stale(folder: Path, name_pattern: str, glob_pattern: str) -> List[Path]:
    tagged = re.compile(rf"\.{name_pattern}\.(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-[a-z0-9_]{{8}}\.tmp")
    legacy = re.compile(rf"\.{name_pattern}\.[a-z0-9_]{{8}}\.tmp")
    removed: List[Path] = []
    try:
        candidates = list(folder.glob(glob_pattern))
    except OSError:
        return removed
    now = time.time()
    for candidate in candidates:
        match = tagged.fullmatch(candidate.name)
        if match is not None and match["host"] == _HOST:
            stale = int(match["pid"]) != os.getpid() and not _process_alive(int(match["pid"]))
        elif match is not None or legacy.fullmatch(candidate.name):
            try:
                stale = now - candidate.stat().st_mtime > STALE_AFTER_SECONDS
            except OSError:
                continue
        else:
            continue
        if stale and candidate.is_file() and not candidate.is_symlink():
            try:
                candidate.unlink()
                removed.append(candidate)
            except OSError:
                pass
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _os_error_behind(error: BaseException):
    """The OSError an exception was raised while handling (or from), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _low_on_space(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return stats.f_bavail * stats.f_frsize < _LOW_SPACE_BYTES


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def check_writable(folder: PathLike) -> None:
    """Raise a :class:`~vimamba.errors.FileSystemError` if no file can be created in ``folder`` (read-only file
    system, no permission), before a long run finds out at its first checkpoint."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".write-check.{_HOST}-{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise file_system_error(e, folder, "write into") from None
    os.close(fd)
    os.unlink(probe)


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same path after resolving symlinks, or hard links to one
    inode. A ``b`` that does not exist yet is the same as ``a`` only if it resolves to ``a``'s path."""
    a, b = Path(a), Path(b)
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`.

    torch writes through a Python file object here, so a failing write raises the real ``OSError`` (``ENOSPC``,
    ``EDQUOT``, ``EIO``), not torch's ``[enforce fail at inline_container.cc] unexpected pos``.
    """
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
    return Path(path)

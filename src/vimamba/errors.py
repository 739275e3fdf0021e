"""The errors a user can act on, as opposed to bugs.

The ``vimamba`` command prints a :class:`UserError` as one line (``vimamba CMD: error: MESSAGE``) and exits 1; any
other exception from deep inside keeps its traceback, because it is a bug to report. File-system failures become a
:class:`FileSystemError`: an ``OSError`` (same ``errno``, ``filename``) whose message names the path and the cause.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Optional, Union

__all__ = ["UserError", "InputError", "UnknownNameError", "ArgumentsError", "MissingFileError", "DownloadError", "FileSystemError", "file_system_error"]


class UserError(Exception):
    """An error the user can fix (bad input, a path that cannot be used): reported as one line, no traceback.

    Raise a subclass where the user is the cause (a flag, a file, a config value); raise anything else where only a
    bug can be the cause, so that the command line keeps its traceback.
    """


class InputError(UserError, ValueError):
    """A value the user gave (a flag, a config field, an image size, a model name) that cannot be used.

    A ``ValueError`` too, so library callers catching ``ValueError`` keep working.
    """


class UnknownNameError(InputError, KeyError):
    """A name that is not registered (a model, a dataset): a ``KeyError`` too, printed without quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ArgumentsError(UserError, TypeError):
    """Keyword arguments a function does not take (e.g. a model setting that does not exist): a ``TypeError`` too."""


class DownloadError(UserError, RuntimeError):
    """Weights or data that could not be downloaded (no network, a moved file): says how to get them by hand."""


class FileSystemError(UserError, OSError):
    """A file or folder that cannot be read, written or created; ``str()`` is one line naming path and cause."""

    def __init__(self, code: int, message: str, filename: Optional[str] = None):
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


class MissingFileError(FileSystemError, FileNotFoundError):
    """A file or folder the user named that does not exist: a ``FileNotFoundError`` too."""

    def __init__(self, message: str, filename: Optional[Union[str, os.PathLike]] = None):
        super().__init__(_errno.ENOENT, message, os.fspath(filename) if filename is not None else None)


# errno -> how the cause reads in a message
_CAUSES = {
    _errno.ENOSPC: "no space left on device",
    _errno.EDQUOT: "disk quota exceeded",
    _errno.EROFS: "read-only file system",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "operation not permitted",
    _errno.ENOTDIR: "a file is in the way where a folder should be",
    _errno.EEXIST: "a file is in the way where a folder should be",
    _errno.EISDIR: "it is a folder, not a file",
    _errno.ENOENT: "no such file or folder",
    _errno.EIO: "input/output error",
    _errno.ENAMETOOLONG: "file name too long",
}


def file_system_error(error: OSError, path: Union[str, os.PathLike], action: str = "write",
                      note: str = "") -> FileSystemError:
    """``error`` (from reading/writing/creating ``path``) as a :class:`FileSystemError` reading
    ``"CAUSE: cannot ACTION 'PATH'[; NOTE]"``, e.g. ``no space left on device: cannot write 'run/last.pth'``."""
    if isinstance(error, FileSystemError):
        return error
    if error.errno is None:  # an OSError raised with a message only
        code, cause = _errno.EIO, str(error) or type(error).__name__
    else:
        code = error.errno
        cause = _CAUSES.get(code) or (error.strerror or str(error)).lower()
    message = f"{cause}: cannot {action} '{os.fspath(path)}'"
    if error.filename is not None and os.fspath(error.filename) != os.fspath(path) and code in (
            _errno.ENOTDIR, _errno.EEXIST):
        message += f" (at '{os.fspath(error.filename)}')"
    if note:
        message += f"; {note}"
    return FileSystemError(code, message, os.fspath(path))

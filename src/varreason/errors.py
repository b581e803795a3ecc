"""User-facing errors: one clear line naming the file, row and field; the CLI exits with status 2."""

from __future__ import annotations

import errno
import os
from pathlib import Path

WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}  # one line, not a traceback
LOW_SPACE = 1 << 20  # bytes: a write failing with less than this free is a full disk


class InputError(Exception):
    """Bad input from the user (config, data file, model path). Never a bare traceback."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.message, self.file, self.row, self.field = message, file, row, field
        super().__init__(self.line())

    def line(self) -> str:
        where = [part for part in (self.file, None if self.row is None else f"row {self.row}",
                                   None if self.field is None else f"field '{self.field}'") if part]
        text = ": ".join([", ".join(where), self.message]) if where else self.message
        return text.replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever the user's input held


def disk_failure(exc: BaseException, folder: str | Path | None) -> OSError | None:
    """The full or read-only disk behind a failed write, as an OSError the CLI prints as one line; None when the
    failure has another cause.

    Why more than `isinstance(exc, OSError)`: safetensors and torch.save report a full disk as errors of their own
    (`SafetensorError: ... os error 28`, `RuntimeError: unexpected pos ...`), so past the exception chain the
    filesystem of `folder` is asked whether it is read-only or out of space.
    """
    seen, hops = exc, 0
    while seen is not None and hops < 16:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRORS:
            if seen.filename is None and folder is not None:  # a failed close names no file: name the folder
                return OSError(seen.errno, seen.strerror, str(folder))
            return seen
        seen, hops = seen.__cause__ or seen.__context__, hops + 1
    if folder is None:
        return None
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
    if fs.f_bavail * fs.f_frsize < LOW_SPACE or "os error 28" in str(exc):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None

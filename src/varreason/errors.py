"""User-facing errors: one clear line naming the file, row and field; the CLI exits with status 2."""

from __future__ import annotations

import errno
import os
from pathlib import Path

WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}  # one line, not a traceback
LOW_SPACE = 1 << 20  # bytes: a write failing with less than this free is a full disk


class InputError(Exception):
    """Bad input from the user (config, data file, model path). Never a bare traceback.

    Where in a file: `row` is a 0-based record index (as `datasets` and pandas count); a user's data file gives
    `line` instead, 1-based as an editor counts, in a `unit`: "line" (JSONL / CSV: the line where the record starts),
    "record" (the N-th object of a JSON array) or "row" (Parquet, `datasets`). When both are given the line is shown.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None,
                 line: int | None = None, unit: str = "line"):
        self.message, self.file, self.row, self.field = message, file, row, field
        self.line_no, self.unit = line, unit
        super().__init__(self.line())

    def place(self) -> str:
        """Where in the file, without the file: "line 4, field 'trace'" (empty when nothing is known)."""
        if self.line_no is not None:
            at = f"{self.unit} {self.line_no}" + (" (1-based)" if self.unit == "row" else "")
        else:
            at = None if self.row is None else f"row {self.row}"
        return ", ".join(part for part in (at, None if self.field is None else f"field '{self.field}'") if part)

    def line(self) -> str:
        where = ", ".join(part for part in (self.file, self.place()) if part)
        text = f"{where}: {self.message}" if where else self.message
        return text.replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever the user's input held


MAX_REPORTED = 20  # defects listed in one message; the rest are counted


def all_in_one(errors: list[InputError], file: str | None, what: str = "bad rows", advice: str = "") -> InputError:
    """Every defect of a file as one InputError (one line): the first MAX_REPORTED with their places, then "... and N
    more", so a user fixes them in one pass instead of one run per row; `advice` ends the message."""
    if len(errors) == 1:
        e = errors[0]
        one = InputError(e.message + advice, file=e.file, row=e.row, field=e.field, line=e.line_no, unit=e.unit)
    else:
        shown = "; ".join(f"{e.place()}: {e.message}" if e.place() else e.message for e in errors[:MAX_REPORTED])
        more = f"; ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        one = InputError(f"{len(errors)} {what}: {shown}{more}{advice}", file=file)
    one.errors = errors
    return one


def decode_utf8(raw: bytes, source: str, row: int | None = None, line_no: int | None = None) -> str:
    """Bytes as UTF-8 text, or an InputError naming the file (row), line and the first bad byte's offset in its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = raw.rfind(b"\n", 0, exc.start) + 1
        line_no = line_no if line_no is not None else raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"not valid UTF-8 (line {line_no}, byte {exc.start - start}: "
                         f"{raw[exc.start:exc.start + 1]!r})", file=source, row=row) from None


def existing_ancestor(path: str | Path) -> Path:
    """The path itself if it exists, else its nearest parent that does."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# How libraries word a write cut short when they do not raise an OSError: safetensors ("os error 28" is ENOSPC,
# "os error 30" EROFS) and torch.save's zip writer.
LIBRARY_WRITE_FAILURES = ("SafetensorError", "PytorchStreamWriter", "unexpected pos", "inline_container")


def disk_failure(exc: BaseException, folder: str | Path | None) -> OSError | None:
    """The full or read-only disk behind a failed write, as an OSError the CLI prints as one line; None when the
    failure has another cause (then it stays a traceback).

    An OSError with a disk errno in the exception chain is the answer. Past it, only a library's own report of a
    failed write (`LIBRARY_WRITE_FAILURES`) asks the filesystem of `folder` whether it is read-only or out of space;
    any other error is a bug, whatever the disk holds.
    """
    seen, hops = exc, 0
    while seen is not None and hops < 16:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRORS:
            if seen.filename is None and folder is not None:  # a failed close names no file: name the folder
                return OSError(seen.errno, seen.strerror, str(folder))
            return seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
        hops += 1
    text = f"{type(exc).__name__}: {exc}"
    if folder is None or not any(marker in text for marker in LIBRARY_WRITE_FAILURES):
        return None
    try:
        fs = os.statvfs(existing_ancestor(folder))
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY or "os error 30" in text:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
    if fs.f_bavail * fs.f_frsize < LOW_SPACE or "os error 28" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None

"""User-facing errors: one clear line naming the file, row and field; the CLI exits with status 2."""

from __future__ import annotations


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

"""The error raised for a behavior log that cannot be read."""

from __future__ import annotations


class BehaviorLogError(ValueError):
    """
    A behavior log (or labels table) that breaks a rule that cannot be fixed by dropping a row.

    The message names the file, the line (or row, for Parquet) and the column where they are known, e.g.
    `events.csv, line 7, column 'timestamp': cannot parse 'yesterday' as a time`.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        line: int | None = None,
        column: str | None = None,
        unit: str = "line",
    ):
        self.path = path
        self.line = line
        self.column = column
        self.unit = unit
        self.detail = message
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"{unit} {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(", ".join(where) + ": " + message if where else message)

    def __reduce__(self):
        # Keeps the error picklable (DataLoader workers send it back to the main process).
        return (type(self), (self.detail, self.path, self.line, self.column, self.unit))

"""Domain errors. Every error names the file, column, field or value that caused it."""

from __future__ import annotations


class SynthEHRError(Exception):
    """Base class for every error synthehr raises on purpose."""


class DataError(SynthEHRError, ValueError):
    """Bad input data: names the file, the column and (when known) the offending value."""

    def __init__(self, message: str, *, file: str | None = None, column: str | None = None, value: object = None):
        self.file = file
        self.column = column
        self.value = value
        where = []
        if file is not None:
            where.append(f"file {file!s}")
        if column is not None:
            where.append(f"column {column!r}")
        if value is not None:
            where.append(f"value {value!r}")
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)


class ValidationErrors(DataError):
    """Several problems found at once (gathered before raising, as SDV's validate() does)."""

    def __init__(self, problems: list[str], *, file: str | None = None):
        self.problems = list(problems)
        bullet = "\n  - ".join(self.problems)
        super().__init__(f"{len(self.problems)} problem(s):\n  - {bullet}", file=file)


class ModelFileError(SynthEHRError, ValueError):
    """A saved model folder is missing a file, was tampered with or does not match its config."""


class ConditioningError(SynthEHRError, ValueError):
    """A conditioning request names unknown features, or values that cannot be honoured."""

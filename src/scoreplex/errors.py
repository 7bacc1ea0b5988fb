"""The scoreplex error hierarchy.

Every error a user can cause is a :class:`ScoreplexError`. Children also inherit the matching built-in so that
callers who catch ``ValueError`` or ``KeyError`` keep working. Messages say what was received, what was expected,
where (file, row, column, task) and how to fix it.
"""

from __future__ import annotations


class ScoreplexError(Exception):
    """Base class of every error scoreplex raises on purpose."""


class ConfigError(ScoreplexError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DataError(ScoreplexError, ValueError):
    """Input data is malformed: a missing column, a bad label, an empty text, a duplicate id..."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        task: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.file, self.row, self.column, self.task, self.fix = file, row, column, task, fix
        where = [
            f"file {file}" if file is not None else None,
            f"row {row}" if row is not None else None,
            f"column {column!r}" if column is not None else None,
            f"task {task!r}" if task is not None else None,
        ]
        located = ", ".join(w for w in where if w)
        text = f"{located}: {message}" if located else message
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class OffScaleError(DataError):
    """A score that is not on its rubric dimension's scale (:meth:`scoreplex.tasks.Dimension.locate`). ``reason`` is
    the message without a location, for readers that add the file, row and column."""

    def __init__(self, reason: str, **where) -> None:
        self.reason = reason
        super().__init__(reason, **where)


class TaskFileError(DataError, ConfigError):
    """A task-spec file (``--tasks``) is unreadable or malformed; the message names the file and the task."""


class UnknownTaskError(ScoreplexError, KeyError):
    """A task id that the suite or data set does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return str(self.args[0]) if self.args else ""


class UnknownNameError(ScoreplexError, KeyError):
    """A name looked up in a registry (method, pooling, preset) that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ResumeError(ScoreplexError, FileExistsError):
    """An output, or its progress file, belongs to another run; the message says which and how to go on."""


class NoSpaceError(ScoreplexError, OSError):
    """The disk (or the user's quota) filled up while writing an output; ``errno`` is ENOSPC or EDQUOT."""


class BackboneError(ScoreplexError, OSError):
    """The backbone cannot be found or loaded offline."""


class SuiteError(ScoreplexError, OSError):
    """A suite folder is missing files, corrupt, or does not match its manifest."""


class BackboneMismatchError(SuiteError):
    """A suite was trained on a different backbone from the one it is being loaded with."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the error for a registry miss, listing the valid names."""
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(valid))}.")


def run_script(main) -> None:
    """Run a script's ``main()`` (the benchmarks): an error the user caused (:class:`ScoreplexError`, e.g. a wrong
    path or option) or a path that cannot be opened is printed as one line ``error: ...`` on stderr and exits with
    code 2, never a traceback; any other exception is a bug and keeps its traceback.

    Raises:
        SystemExit: code 2 on a :class:`ScoreplexError`, ``FileNotFoundError``, ``NotADirectoryError`` or
            ``PermissionError``.
    """
    import sys

    try:
        main()
    except ScoreplexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check the path.", file=sys.stderr)
        raise SystemExit(2) from None

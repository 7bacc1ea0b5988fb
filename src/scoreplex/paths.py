"""Output paths, checked before any work: a bad path fails in milliseconds, not after minutes of scoring or merging."""

from __future__ import annotations

import os
from pathlib import Path

from scoreplex.errors import ConfigError


def prepare_output_folder(folder: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None) -> Path:
    """Create ``folder`` (and its parents) now, before any work, or raise ConfigError naming it and why.

    Refused: a path under an existing file (``out.csv/x.csv`` where ``out.csv`` is a file), a ``folder`` that exists
    as a file, a folder that cannot be created (permissions, a read-only or special file system) or written to.
    ``output`` is the path the user gave, named in the message (default: ``folder``). Used by every command that
    writes (``score``, ``export-onnx``, ``merge``) so a bad output path fails in milliseconds, not after the work.
    """
    folder = Path(folder)
    named = Path(output) if output is not None else folder
    try:
        for path in (folder, *folder.parents):
            if path.is_dir():
                break
            if path.exists() or path.is_symlink():
                raise ConfigError(
                    f"cannot write {named}: {path} exists and is not a folder, so nothing can be created under it. "
                    "Choose another output path, or move that file away."
                )
        folder.mkdir(parents=True, exist_ok=True)
    except ConfigError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot write {named}: the folder {folder} cannot be created ({reason}). Choose an output in a folder "
            "you can write to."
        ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write {named}: the folder {folder} is not writable by this user. Choose an output in a folder "
            "you can write to."
        )
    return folder

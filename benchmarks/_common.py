"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this folder is on sys.path)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scoreplex.suite import write_json_atomic


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON at ``path`` if a previous run wrote it, else ``compute()`` written there atomically (resumable runs)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json_atomic(path, value)
    return value

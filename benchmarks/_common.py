"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this folder is on sys.path)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scoreplex.suite import write_json_atomic

HEADLINE_KEYS = (
    "unmerged_mean_qwk",
    "gw_plan_t3_mean_qwk",
    "expert_plan_t3_mean_qwk",
    "clustering_plan_t3_mean_qwk",
    "random_plans_t3_median_qwk",
    "storage_ratio_t3",
    "gw_refit_t3_mean_qwk",
    "gw_beats_random_share",
)
"""gw-merging.json's top-level figures: merge_protocol.py's fair protocol owns them once it has run; gw_merging.py's
first-run figures (full fine-tunes, fixed TIES) then live under ``full_finetune_fixed_ties``."""


def whole_numbers(text: str) -> list[int]:
    """An argparse ``type``: ``"2,8"`` -> ``[2, 8]`` (blank parts skipped); a part that is not a whole number is
    argparse's usage error (exit 2) naming the option, not a traceback."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers, e.g. 2,8") from None


def require_suite(path: str | Path) -> None:
    """ConfigError naming ``--suite`` when ``path`` holds no trained suite (no ``manifest.json``), before any work."""
    if not (Path(path) / "manifest.json").is_file():
        from scoreplex.errors import ConfigError

        raise ConfigError(f"--suite {path}: no suite there (no manifest.json); train it first (make bench-asap).")


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON at ``path`` if a previous run wrote it, else ``compute()`` written there atomically (resumable runs)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json_atomic(path, value)
    return value

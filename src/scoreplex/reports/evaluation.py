"""Evaluation reports as table rows for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def evaluation_table(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows ``[task, n, QWK, accuracy, exact match, human QWK]`` for printing."""
    rows = []
    for tid, m in report["tasks"].items():
        human = m.get("human", {}).get("qwk")
        rows.append(
            [
                tid,
                str(m.get("n", "")),
                f"{m['qwk']:.3f}",
                f"{m['accuracy']:.3f}",
                "" if m.get("exact_match") is None else f"{m['exact_match']:.3f}",
                "" if human is None else f"{human:.3f}",
            ]
        )
    return rows

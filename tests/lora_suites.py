"""Tiny LoRA suites shared by the engine and ONNX tests (trained on the demo data with the tiny BERT)."""

from __future__ import annotations

from pathlib import Path

from scoreplex.methods import MethodSettings
from scoreplex.training import TrainConfig
from scoreplex.training.suite import TrainOptions, train_suite

QV_TASKS = ("demo-photosynthesis", "demo-argument")
QK_TASKS = ("demo-food-web", "demo-circuit")
ADAPTER_CONFIG = TrainConfig(epochs=1, lr=1e-2, batch_size=16, patience=0, head_warmup_epochs=0)
"""One epoch at a large rate, so every LoRA B moves far from its zero init (else the invariants could not fail)."""


def train_tiny_suite(datasets, root: Path, bb, path: Path, method: str, settings: MethodSettings, max_length=None):
    """Train ``datasets`` into the suite at ``root`` on the tiny backbone ``bb`` (loaded from ``path``)."""
    options = TrainOptions(
        method=method,
        backbone=str(path),
        config=ADAPTER_CONFIG,
        settings=settings,
        max_length=max_length,
        progress=False,
    )
    return train_suite(datasets, root, options, backbone=bb)

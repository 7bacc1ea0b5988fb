"""Training: the one loop every method trains with (:mod:`.loop`) and per-task training of a suite (:mod:`.suite`).

Only the loop is imported here; import :mod:`scoreplex.training.suite` for ``train_suite`` (it loads the method
registry, which the MoE student's trainer, itself built on the loop, is part of).
"""

from scoreplex.training.loop import FitResult, TrainConfig, fit

__all__ = ["FitResult", "TrainConfig", "fit"]

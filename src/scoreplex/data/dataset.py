"""In-memory scored responses of one task, joined by response id (never by row order)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scoreplex.errors import DataError
from scoreplex.tasks import TaskSpec

MISSING = -1
"""Label value for "no score given" (e.g. no second rater for this response)."""


@dataclass
class TaskData:
    """The responses of one task.

    ``labels`` is ``(N, D)`` int64 with one column per rubric dimension of ``spec`` (``None`` for unscored data);
    ``second`` holds a second rater's scores in the same layout, ``MISSING`` where absent.
    """

    spec: TaskSpec
    ids: list[str]
    texts: list[str]
    labels: np.ndarray | None = None
    second: np.ndarray | None = None
    source: str = ""
    between_mapped: dict[str, int] = field(default_factory=dict)
    """Dimension name -> score cells (both raters) read between two scale points and mapped by the dimension's
    ``between`` rule (:func:`scoreplex.data.readers.read_responses`); empty when none were."""
    skipped: dict[int, str] = field(default_factory=dict)
    """File row number -> why the row was left out (a score off the scale, read with ``off_scale="skip"``)."""

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.texts) != n:
            raise DataError(f"{len(self.ids)} ids but {len(self.texts)} texts.", task=self.spec.id)
        for name in ("labels", "second"):
            arr = getattr(self, name)
            if arr is None:
                continue
            arr = np.asarray(arr, dtype=np.int64)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.shape != (n, len(self.spec.dimensions)):
                raise DataError(
                    f"{name} has shape {arr.shape}, expected ({n}, {len(self.spec.dimensions)}) "
                    "(responses x rubric dimensions).",
                    task=self.spec.id,
                )
            setattr(self, name, arr)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def subset(self, index: Sequence[int] | np.ndarray) -> TaskData:
        idx = np.asarray(index, dtype=np.int64)
        return TaskData(
            spec=self.spec,
            ids=[self.ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            second=None if self.second is None else self.second[idx],
            source=self.source,
        )

    def stratum_keys(self) -> list[str]:
        """A key per response for stratified splitting: the joint label over all dimensions."""
        if self.labels is None:
            return ["" for _ in self.ids]
        return ["|".join(str(int(v)) for v in row) for row in self.labels]

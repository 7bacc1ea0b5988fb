"""Tasks (assessment items) and their rubric dimensions.

A task has one or more rubric dimensions. Each dimension is a categorical outcome with classes ``0..K``:

* ``ordinal`` — a holistic score such as 0–3 (``num_classes = 4``);
* ``binary`` — one criterion of a multi-label rubric, present (1) or absent (0).

Both kinds flow through the same code: a head emits ``sum(num_classes)`` logits, each dimension's slice is a softmax
over its classes, the loss is the sum of per-dimension cross-entropies, and prediction is the per-dimension argmax.
A binary dimension is simply a categorical with two classes (a two-way softmax equals a sigmoid on the logit
difference), so a multi-label rubric is a task with several binary dimensions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scoreplex.errors import ConfigError

DIMENSION_KINDS = ("ordinal", "binary")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a safe identifier (also used as a folder name), else raise ConfigError."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid id: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it also names a folder in the suite)."
        )
    return value


@dataclass(frozen=True)
class Dimension:
    """One rubric dimension of a task."""

    name: str
    """Column-friendly name, e.g. ``score`` or ``evidence``."""
    kind: str = "ordinal"
    """``ordinal`` (classes 0..K) or ``binary`` (0/1)."""
    num_classes: int = 2
    """Number of classes: K + 1 for an ordinal 0..K score; always 2 for binary."""
    description: str = ""
    """What the rubric rewards on this dimension (free text, for reports)."""

    def __post_init__(self) -> None:
        check_id(self.name, "dimension name")
        if self.kind not in DIMENSION_KINDS:
            raise ConfigError(
                f"dimension {self.name!r} has kind {self.kind!r}; expected one of {', '.join(DIMENSION_KINDS)}."
            )
        if self.kind == "binary" and self.num_classes != 2:
            raise ConfigError(
                f"binary dimension {self.name!r} has num_classes={self.num_classes}; binary means 2. "
                "Use kind='ordinal' for more classes."
            )
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= 100:
            raise ConfigError(
                f"dimension {self.name!r} has num_classes={self.num_classes!r}; expected an integer in 2..100 "
                "(an ordinal 0..K score has K + 1 classes)."
            )

    @property
    def max_score(self) -> int:
        return self.num_classes - 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "num_classes": self.num_classes, "description": self.description}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Dimension:
        return cls(
            name=d["name"],
            kind=d.get("kind", "ordinal"),
            num_classes=int(d.get("num_classes", 2)),
            description=d.get("description", ""),
        )


@dataclass(frozen=True)
class TaskSpec:
    """An assessment item: its id, optional prompt and rubric text, and its rubric dimensions."""

    id: str
    """Unique task id (also the folder name of its module in a suite)."""
    dimensions: tuple[Dimension, ...]
    """One dimension for a holistic score; several for a multi-label rubric."""
    prompt: str = ""
    """The item's question, for documentation and reports."""
    rubric: str = ""
    """The scoring rubric text."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Free-form extra facts (subject, source...)."""

    def __post_init__(self) -> None:
        check_id(self.id, "task id")
        dims = tuple(self.dimensions)
        object.__setattr__(self, "dimensions", dims)
        if not dims:
            raise ConfigError(f"task {self.id!r} has no rubric dimensions; give at least one.")
        names = [d.name for d in dims]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"task {self.id!r} repeats dimension names {dupes}; names must be unique.")

    @classmethod
    def ordinal(cls, id: str, max_score: int, *, name: str = "score", **kw: Any) -> TaskSpec:
        """A task with a single holistic ordinal score 0..max_score."""
        return cls(id=id, dimensions=(Dimension(name, "ordinal", max_score + 1),), **kw)

    @classmethod
    def multilabel(cls, id: str, labels: Iterable[str], **kw: Any) -> TaskSpec:
        """A task whose rubric is several binary criteria."""
        return cls(id=id, dimensions=tuple(Dimension(n, "binary", 2) for n in labels), **kw)

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @property
    def class_counts(self) -> list[int]:
        return [d.num_classes for d in self.dimensions]

    @property
    def num_logits(self) -> int:
        return sum(self.class_counts)

    @property
    def is_multilabel(self) -> bool:
        return len(self.dimensions) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "rubric": self.rubric,
            "dimensions": [d.to_dict() for d in self.dimensions],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        if "id" not in d or "dimensions" not in d:
            raise ConfigError(f"a task spec needs 'id' and 'dimensions'; got keys {sorted(d)}.")
        return cls(
            id=str(d["id"]),
            dimensions=tuple(Dimension.from_dict(x) for x in d["dimensions"]),
            prompt=d.get("prompt", ""),
            rubric=d.get("rubric", ""),
            metadata=dict(d.get("metadata", {})),
        )


TASKS_FILE_FIX = (
    'write a JSON list of tasks (or {"tasks": [...]}), each {"id": ..., "dimensions": [{"name": ..., "kind": '
    '"ordinal" or "binary", "num_classes": ...}]}; `scoreplex demo` writes an example (build/demo/data/tasks.json).'
)


def load_task_specs(path: str) -> list[TaskSpec]:
    """Read task specs from a JSON file: a list of task objects or ``{"tasks": [...]}``.

    Raises DataError naming the file (and the task's position) for anything wrong: unreadable, not UTF-8 JSON, the
    wrong shape, an invalid task or dimension, repeated ids.
    """
    from scoreplex.errors import TaskFileError

    def fail(message: str, fix: str = TASKS_FILE_FIX) -> TaskFileError:
        return TaskFileError(message, file=str(path), fix=fix)

    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise fail("the tasks file does not exist.", "check the --tasks path.") from None
    except IsADirectoryError:
        raise fail("the tasks file is a folder.", "give the JSON file inside it.") from None
    except OSError as exc:
        raise fail(f"the tasks file cannot be read ({exc.strerror}).", "check its permissions.") from None
    except UnicodeDecodeError as exc:
        raise fail(f"the tasks file is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except json.JSONDecodeError as exc:
        raise fail(f"the tasks file is not valid JSON ({exc}).") from None
    items = raw["tasks"] if isinstance(raw, dict) and "tasks" in raw else raw
    if not isinstance(items, list):
        raise fail(f"expected a list of tasks or {{'tasks': [...]}}, got {type(items).__name__}.")
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise fail(f"task {i + 1} is a {type(item).__name__}, not an object.")
        if not isinstance(item.get("dimensions"), list):
            raise fail(f"task {i + 1} ({item.get('id')!r}) needs 'dimensions': a list of dimension objects.")
        try:
            if not all(isinstance(d, dict) for d in item["dimensions"]):
                raise ConfigError("every dimension must be an object with a 'name'")
            specs.append(TaskSpec.from_dict(item))
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise fail(f"task {i + 1} ({item.get('id')!r}) is invalid: {exc}") from None
    ids = [s.id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise fail(f"task ids {dupes} appear more than once; ids must be unique.")
    return specs

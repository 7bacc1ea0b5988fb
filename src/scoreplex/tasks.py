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

import bisect
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scoreplex.errors import ConfigError, OffScaleError

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
class ScorePoint:
    """Where a written score falls on a dimension's scale (:meth:`Dimension.locate`)."""

    cls: int
    """The class index, 0-based in scale order."""
    exact: bool
    """True when the value is a scale point; False when it lay between two points and was mapped by the rule."""


@dataclass(frozen=True)
class Dimension:
    """One rubric dimension of a task.

    Classes are ``0..num_classes-1``. A dimension may declare its ``scale``: the score values as written, one per
    class in class order (``("0", "0.5", ..., "5")``, ``("2", ..., "12")``, ``("A", ..., "F")``). Scores are read
    through it (:meth:`locate`) and written back in it (:meth:`value`); probabilities stay per class, in scale order.
    Without a scale the values are the classes themselves, as before scales existed.
    """

    name: str
    """Column-friendly name, e.g. ``score`` or ``evidence``."""
    kind: str = "ordinal"
    """``ordinal`` (classes 0..K) or ``binary`` (0/1)."""
    num_classes: int | None = None
    """Number of classes: K + 1 for an ordinal 0..K score; always 2 for binary. ``None``: ``len(scale)`` with a
    scale, else 2. With a scale, a given value must equal ``len(scale)``."""
    description: str = ""
    """What the rubric rewards on this dimension (free text, for reports)."""
    scale: tuple[str, ...] | None = None
    """The score values as written, lowest first (2..100 of them, unique). All numeric (``"1.0"`` equals ``"1"``):
    strictly increasing, compared as numbers. Otherwise (letters, words): matched as text, ignoring case and
    surrounding spaces. ``None``: the classes ``0..num_classes-1`` are the scores."""
    between: str = "nearest"
    """What a numeric value strictly between two scale points becomes (e.g. 2.25, two raters' 2 and 2.5 averaged):
    ``nearest`` maps it to the nearest point, a value exactly halfway going UP to the higher point (as a rounded
    average does); ``error`` refuses it. Values below the lowest or above the highest point are never mapped."""

    def __post_init__(self) -> None:
        check_id(self.name, "dimension name")
        if self.kind not in DIMENSION_KINDS:
            raise ConfigError(
                f"dimension {self.name!r} has kind {self.kind!r}; expected one of {', '.join(DIMENSION_KINDS)}."
            )
        if self.between not in BETWEEN_RULES:
            raise ConfigError(
                f"dimension {self.name!r} has between={self.between!r}; expected one of {', '.join(BETWEEN_RULES)}."
            )
        if self.scale is not None:
            scale = _check_scale(self.name, self.scale)
            object.__setattr__(self, "scale", scale)
            if self.num_classes is None:
                object.__setattr__(self, "num_classes", len(scale))
            elif self.num_classes != len(scale):
                raise ConfigError(
                    f"dimension {self.name!r} has num_classes={self.num_classes!r} but a scale of {len(scale)} "
                    f"points ({', '.join(scale)}); leave num_classes out (it is the number of scale points)."
                )
        elif self.num_classes is None:
            object.__setattr__(self, "num_classes", 2)
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
        """The highest class index (``num_classes - 1``), whatever the scale."""
        return self.num_classes - 1

    @property
    def numeric(self) -> bool:
        """True when the scores are numbers: no scale (classes), or a scale of numbers."""
        return self.scale is None or _points(self.scale) is not None

    @property
    def values(self) -> tuple[int | float | str, ...]:
        """The score value of each class, in class order (see :meth:`value`)."""
        return tuple(self.value(k) for k in range(self.num_classes))

    def value(self, cls: int) -> int | float | str:
        """The score of class ``cls`` in the scale's own values: an int for an integral number (or without a scale),
        a float for a fractional one (``2.5``), the written text for a non-numeric scale (``"B"``)."""
        if not 0 <= cls < self.num_classes:
            raise ConfigError(f"dimension {self.name!r} has classes 0..{self.max_score}; got class {cls}.")
        if self.scale is None:
            return int(cls)
        points = _points(self.scale)
        if points is None:
            return self.scale[cls]
        x = points[cls]
        return int(x) if x.is_integer() else x

    def label(self, cls: int) -> str:
        """Class ``cls`` as text for tables (``"2.5"``, ``"B"``, ``"3"``)."""
        return str(self.value(cls))

    def locate(self, written: str) -> ScorePoint:
        """The class of a score as written in a file cell (spaces around it ignored).

        Numeric scales compare as numbers (``"2.50"`` is ``"2.5"``); a value strictly between two points maps by
        :attr:`between`. Raises :class:`~scoreplex.errors.OffScaleError` for a value not on the scale (outside its
        range, between points under ``between="error"``, or not a number on a numeric scale). Without a scale, a
        class number ``0..num_classes-1`` (``"3.0"`` allowed) is its own class.
        """
        text = written.strip()
        if self.scale is None:
            x = as_number(text)
            if x is None or not x.is_integer():
                raise OffScaleError(
                    f"score {text!r} is not an integer class 0..{self.max_score}.",
                    fix="write scores as whole numbers 0..K, or declare the dimension's scale in the task spec "
                    '(e.g. "scale": ["0", "0.5", "1", ...]).',
                )
            if not 0 <= x <= self.max_score:
                raise OffScaleError(
                    f"score {text} is outside the declared range 0..{self.max_score}.",
                    fix="correct the score, or declare more classes (or a scale) in the task spec.",
                )
            return ScorePoint(int(x), True)
        points = _points(self.scale)
        if points is None:
            folded = [p.casefold() for p in self.scale]
            if text.casefold() in folded:
                return ScorePoint(folded.index(text.casefold()), True)
            raise OffScaleError(
                f"score {text!r} is not on the scale {self.describe_scale()}.",
                fix="correct the score, or add the value to the dimension's scale in the task spec.",
            )
        x = as_number(text)
        if x is None:
            raise OffScaleError(
                f"score {text!r} is not a number; the scale is {self.describe_scale()}.",
                fix="correct the score.",
            )
        lo, hi = points[0], points[-1]
        if x < lo - _EPS * max(1.0, abs(lo)) or x > hi + _EPS * max(1.0, abs(hi)):
            raise OffScaleError(
                f"score {text} is outside the scale {self.describe_scale()}.",
                fix="correct the score, or widen the dimension's scale in the task spec.",
            )
        upper = min(bisect.bisect_left(points, x), len(points) - 1)  # first point >= x
        for k in (upper, upper - 1):
            if k >= 0 and abs(points[k] - x) <= _EPS * max(1.0, abs(points[k])):
                return ScorePoint(k, True)
        if self.between == "error":
            raise OffScaleError(
                f"score {text} lies between the scale points {self.scale[upper - 1]} and {self.scale[upper]}.",
                fix="correct the score, or declare between='nearest' on the dimension to map it to the nearest point.",
            )
        below, above = x - points[upper - 1], points[upper] - x
        if abs(below - above) <= _EPS * max(1.0, abs(x)):  # halfway: up
            return ScorePoint(upper, False)
        return ScorePoint(upper if above < below else upper - 1, False)

    def describe_scale(self) -> str:
        """The scores as text for messages: ``0, 0.5, ..., 5 (11 points)`` or ``0..3``."""
        if self.scale is None:
            return f"0..{self.max_score}"
        shown = list(self.scale) if len(self.scale) <= 8 else [*self.scale[:3], "...", *self.scale[-2:]]
        return f"{', '.join(shown)} ({len(self.scale)} points)"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "description": self.description,
        }
        if self.scale is not None:  # absent keys: a spec written before scales existed reads the same
            out["scale"] = list(self.scale)
            out["between"] = self.between
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Dimension:
        scale = d.get("scale")
        if scale is not None and (isinstance(scale, (str, bytes)) or not isinstance(scale, (list, tuple))):
            raise ConfigError(
                f"dimension {d.get('name')!r} has scale {scale!r}; expected a list of score values, lowest first, "
                'e.g. ["0", "0.5", "1"] or ["A", "B", "C"].'
            )
        num_classes = d.get("num_classes")
        return cls(
            name=d["name"],
            kind=d.get("kind", "ordinal"),
            num_classes=None if num_classes is None else int(num_classes),
            description=d.get("description", ""),
            scale=None if scale is None else tuple(scale),
            between=d.get("between", "nearest"),
        )

    def difference(self, other: Dimension) -> list[str]:
        """What differs between this dimension and ``other`` in what a model learns: kind, classes, scale.
        Empty when they score alike (descriptions and ``between`` may differ)."""
        out = []
        if self.kind != other.kind:
            out.append(f"dimension {self.name!r}: kind {self.kind} -> {other.kind}")
        if self.num_classes != other.num_classes:
            out.append(f"dimension {self.name!r}: {self.num_classes} classes -> {other.num_classes}")
        if self.values != other.values:
            out.append(f"dimension {self.name!r}: scale {self.describe_scale()} -> {other.describe_scale()}")
        return out


BETWEEN_RULES = ("nearest", "error")
"""What a numeric score between two scale points becomes (:attr:`Dimension.between`)."""
MAX_SCALE_POINTS = 100
"""The most points a scale may have (a head has one output per point)."""
_EPS = 1e-9  # relative tolerance when comparing a read number with a scale point


def as_number(text: str) -> float | None:
    """A score cell ``text`` as a finite float, or None (``"nan"``, ``"inf"``, words, letter grades)."""
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _points(scale: tuple[str, ...]) -> list[float] | None:
    """The scale's values as numbers, or None when any of them is not a number."""
    points = [as_number(v) for v in scale]
    return None if any(p is None for p in points) else points  # type: ignore[return-value]


def _check_scale(name: str, scale: Any) -> tuple[str, ...]:
    """The scale as stripped strings; raises ConfigError naming the dimension for a bad one."""
    if isinstance(scale, (str, bytes)) or not isinstance(scale, Iterable):
        raise ConfigError(f"dimension {name!r} has scale {scale!r}; expected a sequence of score values, lowest first.")
    values = []
    for v in scale:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(
                f'dimension {name!r} has scale value {v!r}; write each value as a string or number, e.g. "2.5".'
            )
        text = (repr(v) if isinstance(v, float) else str(v)).strip()
        if not text:
            raise ConfigError(f"dimension {name!r} has an empty scale value; remove it.")
        values.append(text)
    if not 2 <= len(values) <= MAX_SCALE_POINTS:
        raise ConfigError(
            f"dimension {name!r} has a scale of {len(values)} points; expected 2..{MAX_SCALE_POINTS} values."
        )
    points = _points(tuple(values))
    keys = [str(p) for p in points] if points is not None else [v.casefold() for v in values]
    dupes = sorted({v for v, k in zip(values, keys, strict=True) if keys.count(k) > 1})
    if dupes:
        raise ConfigError(f"dimension {name!r} repeats scale values {dupes}; each value must appear once.")
    if points is not None:
        bad = [(a, b) for a, b, x, y in zip(values, values[1:], points, points[1:], strict=False) if y <= x]
        if bad:
            raise ConfigError(
                f"dimension {name!r} has a numeric scale out of order ({bad[0][0]} before {bad[0][1]}); list the "
                "values lowest first."
            )
    return tuple(values)


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

    def difference(self, other: TaskSpec) -> list[str]:
        """What differs between this spec and ``other`` in what a model learns, one line each (``old -> new``):
        dimension names and order, and per dimension its kind, classes and scale (:meth:`Dimension.difference`).
        Empty when a model trained on one scores the other; prompt, rubric, descriptions and metadata may differ."""
        if self.dimension_names != other.dimension_names:
            return [f"dimensions {', '.join(self.dimension_names)} -> {', '.join(other.dimension_names)}"]
        return [line for a, b in zip(self.dimensions, other.dimensions, strict=True) for line in a.difference(b)]

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

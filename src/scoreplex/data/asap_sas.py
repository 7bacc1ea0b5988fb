"""Loader of the ASAP-SAS short-answer scoring data (10 items, Hewlett Foundation 2012), read in place.

The data is for research use and is never copied into the project: it is read from a folder holding ``train.tsv``,
``test.tsv``, ``stats.json`` and ``items/item-N.txt`` (see that folder's README). The folder is found as follows:

1. the environment variable ``SCOREPLEX_ASAP_SAS``, if set;
2. ``../shared/data/asap-sas`` relative to the current working directory;
3. ``../shared/data/asap-sas`` relative to the repository root (next to this checkout).

Task ids are ``asap-1`` .. ``asap-10``; response ids ``asap-{Id}``; ``Score1`` is the gold score and ``Score2`` the
second rater (train only). ``Set10Choice`` (item 10's colour choice) is not read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from scoreplex.data.dataset import TaskData
from scoreplex.data.readers import ColumnMap, read_responses
from scoreplex.errors import ConfigError, DataError, UnknownTaskError
from scoreplex.tasks import Dimension, TaskSpec

ENV_VAR = "SCOREPLEX_ASAP_SAS"
"""Environment variable naming the ASAP-SAS folder."""
SPLITS = ("train", "test")
ITEMS = tuple(str(i) for i in range(1, 11))
_REQUIRED = ("train.tsv", "test.tsv", "stats.json")


def candidate_roots() -> list[Path]:
    """The folders searched for the data, in order (see the module docstring)."""
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    repo_root = Path(__file__).resolve().parents[3]
    return [
        (Path.cwd() / ".." / "shared" / "data" / "asap-sas").resolve(),
        (repo_root / ".." / "shared" / "data" / "asap-sas").resolve(),
    ]


def default_root() -> Path:
    """The ASAP-SAS folder: the first candidate that exists, else the first candidate (for error messages)."""
    candidates = candidate_roots()
    return next((p for p in candidates if p.is_dir()), candidates[0])


DEFAULT_ROOT = default_root()
"""The folder found at import time; the functions below look again at call time (the environment may change)."""


def available(root: str | os.PathLike[str] | None = None) -> bool:
    """Whether the ASAP-SAS files (``train.tsv``, ``test.tsv``, ``stats.json``) are present."""
    folder = Path(root) if root is not None else default_root()
    return all((folder / name).is_file() for name in _REQUIRED)


def _item_number(item: int | str) -> str:
    key = str(item).removeprefix("asap-")
    if key not in ITEMS:
        raise UnknownTaskError(f"ASAP-SAS has no item {item!r}; choose from 1..10 (or 'asap-1'..'asap-10').")
    return key


QUESTION_ENDS = ("Scoring Rubric", "Scoring and Rubric", "Reading for Information Scoring", "Rubric for", "Rubric:")
"""Headers that end an item's question in ``items/item-N.txt`` (the scoring rubric follows)."""


def question_text(item_text: str) -> str:
    """The question a student answered, from the text of ``items/item-N.txt``: what follows the last ``Prompt-<title>``
    header (the rest of its line is the title) up to the first rubric header (:data:`QUESTION_ENDS`), whitespace
    collapsed. Source-dependent items keep their procedure or data table (the question refers to it); the reading
    passages of items 3, 4, 7, 8 and 9 come before the header and are left out. Empty when there is no header."""
    start = item_text.rfind("Prompt-")
    if start < 0:
        return ""
    newline = item_text.find("\n", start)
    if newline < 0:
        return ""
    body = item_text[newline + 1 :]
    cut = min((i for i in (body.find(end) for end in QUESTION_ENDS) if i >= 0), default=len(body))
    return " ".join(body[:cut].split())


def task_specs(root: str | os.PathLike[str] | None = None) -> dict[str, TaskSpec]:
    """The 10 item specs, keyed by the ``EssaySet`` value (``"1"``..``"10"``); spec ids are ``asap-N``.

    The score range comes from ``stats.json`` (``num_classes = max score + 1``); the prompt is the first line of
    ``items/item-N.txt``, the rubric its whole text, and ``metadata["question"]`` the question itself
    (:func:`question_text`: what a cross-item model pairs with each response).
    """
    folder = _folder(root)
    stats_path = folder / "stats.json"
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"cannot read the item statistics ({exc}).", file=str(stats_path), fix="restore the file."
        ) from exc
    specs: dict[str, TaskSpec] = {}
    for key in ITEMS:
        if key not in stats or not stats[key].get("scores"):
            raise DataError(
                f"item {key} or its 'scores' list is missing.", file=str(stats_path), fix="restore the file."
            )
        item = stats[key]
        item_path = folder / "items" / f"item-{key}.txt"
        rubric = item_path.read_text(encoding="utf-8") if item_path.is_file() else ""
        prompt = next((line.strip() for line in rubric.splitlines() if line.strip()), "")
        specs[key] = TaskSpec(
            id=f"asap-{key}",
            dimensions=(Dimension("score", "ordinal", int(max(item["scores"])) + 1),),
            prompt=prompt,
            rubric=rubric,
            metadata={
                "source": "ASAP-SAS",
                "item": int(key),
                "train": item.get("train"),
                "test": item.get("test"),
                "human_human_qwk_train": item.get("human_human_qwk_train"),
                "question": question_text(rubric),
            },
        )
    return specs


def _folder(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        folder = Path(root)
        if not available(folder):
            raise DataError(
                f"no ASAP-SAS data in {folder} (expected {', '.join(_REQUIRED)}).",
                file=str(folder),
                fix=f"pass the folder that holds these files, or set {ENV_VAR}.",
            )
        return folder
    candidates = candidate_roots()
    for folder in candidates:
        if available(folder):
            return folder
    looked = "; ".join(str(p) for p in candidates)
    raise DataError(
        f"the ASAP-SAS data folder was not found (looked in: {looked}; expected {', '.join(_REQUIRED)}).",
        fix=f"set the environment variable {ENV_VAR} to the folder, or pass root=.",
    )


def load_asap_sas(
    root: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    items: Iterable[int | str] | None = None,
) -> dict[str, TaskData]:
    """Load one split of ASAP-SAS as ``{"asap-N": TaskData}``, in item order (or the order of ``items``).

    ``split`` is ``"train"`` (Score1 gold, Score2 as ``second``) or ``"test"`` (Score1 gold). ``items`` picks items
    by number or task id (``3`` or ``"asap-3"``); default all 10. Response ids are ``asap-{Id}``.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}; choose one of: {', '.join(SPLITS)}.")
    keys = list(ITEMS) if items is None else list(dict.fromkeys(_item_number(i) for i in items))
    folder = _folder(root)
    specs = task_specs(folder)
    columns = ColumnMap(
        text="EssayText",
        task="EssaySet",
        labels={"score": "Score1"},
        id="Id",
        second={"score": "Score2"} if split == "train" else None,
    )
    data = read_responses(folder / f"{split}.tsv", columns, specs, fmt="tsv", quoting="none")
    out: dict[str, TaskData] = {}
    for key in keys:
        task = data.get(f"asap-{key}")
        if task is None:
            continue
        out[task.spec.id] = TaskData(
            spec=task.spec,
            ids=[f"asap-{i}" for i in task.ids],
            texts=task.texts,
            labels=task.labels,
            second=task.second,
            source=task.source,
        )
    return out

"""The project's own demo data: synthetic short answers to four science items, generated deterministically.

Each item has a rubric whose criteria are phrases a response may or may not contain; a response is built from a
random subset of correct ideas, off-topic filler and (sometimes) a misconception, and scored by the rubric's rule,
with a little rater noise. The data is synthetic by design — small, licence-free, and learnable in a few minutes on
two CPU cores — so the demo shows the whole workflow; real-data figures come from the ASAP-SAS benchmark.

Tasks: two ordinal holistic items (0–3 and 0–2), one multi-label argument item (claim / evidence / reasoning, the
NGSS-style rubric of the GW-SMM and UniMoE papers) and one two-label item.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoreplex.tasks import TaskSpec


@dataclass(frozen=True)
class _Item:
    spec: TaskSpec
    ideas: dict[str, list[str]]  # criterion -> phrasings
    filler: list[str]
    misconceptions: list[str]


_FILLER_COMMON = [
    "i think",
    "in my opinion",
    "this is because",
    "we learned this in class",
    "it is important",
    "that is what happens",
    "as the text says",
    "i am not sure but",
    "basically",
    "so overall",
]

_ITEMS = [
    _Item(
        TaskSpec.ordinal(
            "demo-photosynthesis",
            3,
            prompt="Explain how a plant makes its own food.",
            rubric="3: four or more key ideas (light energy, carbon dioxide, water, sugar, chlorophyll, oxygen); "
            "2: two or three; 1: one; 0: none. A misconception lowers the score by one.",
        ),
        {
            "light": ["the plant uses energy from sunlight", "light energy is captured", "sunlight powers the process"],
            "co2": ["it takes in carbon dioxide from the air", "carbon dioxide enters through the leaves"],
            "water": ["water is absorbed by the roots", "the roots take up water"],
            "sugar": ["the plant makes glucose", "sugar is produced as food", "it turns them into glucose"],
            "chlorophyll": ["chlorophyll in the chloroplasts absorbs light", "the green chlorophyll traps energy"],
            "oxygen": ["oxygen is released as a waste product", "it gives off oxygen"],
        },
        ["plants are green", "leaves are big", "plants grow in the garden", "flowers smell nice"],
        ["plants eat soil for food", "plants get their food from the ground", "plants breathe in oxygen to make food"],
    ),
    _Item(
        TaskSpec.ordinal(
            "demo-food-web",
            2,
            prompt="Predict what happens to the rabbits if the foxes disappear, and explain why.",
            rubric="2: predicts rabbits increase and explains with predation and a later limit (food or grass); "
            "1: correct prediction or one reason; 0: neither.",
        ),
        {
            "predict": ["the rabbit population will increase", "there will be more rabbits"],
            "predation": ["because nothing is eating them anymore", "since the predators are gone"],
            "limit": ["later the grass will run out", "then food becomes limited and some rabbits starve"],
        },
        ["foxes are orange", "rabbits are cute", "the forest is big", "animals live in the woods"],
        ["the rabbits will all die right away", "the rabbits will turn into foxes"],
    ),
    _Item(
        TaskSpec.multilabel(
            "demo-argument",
            ["claim", "evidence", "reasoning"],
            prompt="Does the mass of the ice change when it melts? Support your answer with the data.",
            rubric="claim: states the mass stays the same; evidence: cites the measured masses; reasoning: links "
            "to conservation of matter (particles are not created or destroyed).",
        ),
        {
            "claim": ["the mass stays the same", "the mass does not change when it melts"],
            "evidence": ["the scale read 50 grams before and 50 grams after", "both measurements were 50 g"],
            "reasoning": [
                "matter is conserved so no particles are lost",
                "the particles only change state they are not destroyed",
            ],
        },
        ["ice is cold", "water is wet", "the cup was on the table", "it melted in ten minutes"],
        ["the mass goes down because water is lighter", "melting makes the mass disappear"],
    ),
    _Item(
        TaskSpec.multilabel(
            "demo-circuit",
            ["closed_loop", "energy_transfer"],
            prompt="Why does the bulb light up when the switch is closed?",
            rubric="closed_loop: the circuit forms a complete path; energy_transfer: the battery's energy is "
            "transferred to light and heat in the bulb.",
        ),
        {
            "closed_loop": ["the circuit is a complete loop", "the path for the current is closed"],
            "energy_transfer": ["the battery transfers energy to the bulb", "electrical energy becomes light and heat"],
        },
        ["the bulb is made of glass", "switches can be on or off", "wires are made of copper"],
        ["the bulb has its own electricity inside", "the switch makes the electricity"],
    ),
]


def demo_specs() -> list[TaskSpec]:
    return [item.spec for item in _ITEMS]


def vocabulary_words() -> list[str]:
    """Every lowercase word the demo texts can contain (a tiny test tokenizer's vocabulary)."""
    words: set[str] = set()
    for item in _ITEMS:
        for phrase in [*sum(item.ideas.values(), []), *item.filler, *item.misconceptions, *_FILLER_COMMON]:
            words.update(re.findall(r"[a-z0-9]+", phrase.lower()))
    return sorted(words)


def _score(item: _Item, present: set[str], misconception: bool) -> list[int]:
    tid = item.spec.id
    if tid == "demo-photosynthesis":
        n = len(present)
        s = 0 if n == 0 else 1 if n == 1 else 2 if n <= 3 else 3
        return [max(0, s - 1) if misconception else s]
    if tid == "demo-food-web":
        if "predict" in present and ("predation" in present) and ("limit" in present):
            s = 2
        elif present:
            s = 1
        else:
            s = 0
        return [0 if misconception and s < 2 else s]
    return [int(dim.name in present) for dim in item.spec.dimensions]


def _response(item: _Item, rng: np.random.Generator) -> tuple[str, list[int]]:
    crit = list(item.ideas)
    p = rng.uniform(0.15, 0.85)
    present = [c for c in crit if rng.random() < p]  # a list: a set's order changes with PYTHONHASHSEED
    misconception = rng.random() < 0.15
    parts = [str(rng.choice(item.ideas[c])) for c in present]
    parts += [str(rng.choice(item.filler)) for _ in range(int(rng.integers(0, 3)))]
    if misconception:
        parts.append(str(rng.choice(item.misconceptions)))
    if not parts:
        parts.append(str(rng.choice(item.filler)))
    rng.shuffle(parts)
    if rng.random() < 0.5:
        parts.insert(0, str(rng.choice(_FILLER_COMMON)))
    text = ", ".join(parts)
    text = text[0].upper() + text[1:] + "."
    return text, _score(item, set(present), misconception)


def generate_demo(n_per_task: int = 400, *, seed: int = 0, noise: float = 0.05) -> list[dict[str, str]]:
    """Rows ``{id, task, text, <dimension columns>, <dimension>_rater2}``; ``noise`` = share of first-rater scores
    replaced by a neighbouring score (rater disagreement). A second rater scores every fifth response."""
    rng = np.random.default_rng(seed)
    rows = []
    for item in _ITEMS:
        for i in range(n_per_task):
            text, scores = _response(item, rng)
            truth = list(scores)
            for d, dim in enumerate(item.spec.dimensions):
                if rng.random() < noise:
                    scores[d] = int(np.clip(scores[d] + rng.choice([-1, 1]), 0, dim.max_score))
            row = {"id": f"{item.spec.id}-{i:04d}", "task": item.spec.id, "text": text}
            for d, dim in enumerate(item.spec.dimensions):
                row[dim.name] = str(scores[d])
                second = truth[d] if rng.random() > noise else int(np.clip(truth[d] + 1, 0, dim.max_score))
                row[f"{dim.name}_rater2"] = str(second) if i % 5 == 0 else ""
            rows.append(row)
    return rows


def write_demo(folder: str | Path, *, n_train: int = 400, n_test: int = 150, seed: int = 0) -> dict[str, Path]:
    """Write ``train.csv``, ``test.csv`` and ``tasks.json`` for the demo into ``folder``; returns their paths.

    The CSVs have one column per rubric dimension name across all tasks; a task leaves other tasks' columns empty.
    """
    import json

    from scoreplex.data.readers import write_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dims: list[str] = []
    for spec in demo_specs():
        for dim in spec.dimensions:
            if dim.name not in dims:
                dims.append(dim.name)
    columns = ["id", "task", "text"] + dims + [f"{d}_rater2" for d in dims]
    paths = {}
    for name, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        rows = generate_demo(n, seed=s)
        if name == "test":
            for r in rows:
                r["id"] = "test-" + r["id"]
        full = [{c: r.get(c, "") for c in columns} for r in rows]
        paths[name] = folder / f"{name}.csv"
        write_table(paths[name], full)
    paths["tasks"] = folder / "tasks.json"
    tmp = paths["tasks"].with_suffix(".tmp")
    tmp.write_text(json.dumps({"tasks": [s.to_dict() for s in demo_specs()]}, indent=1), encoding="utf-8")
    tmp.replace(paths["tasks"])
    return paths


def demo_column_labels(specs: Sequence[TaskSpec]) -> dict[str, str]:
    """Dimension -> column mapping used by the demo CSVs (each dimension has a column of its own name)."""
    return {d.name: d.name for s in specs for d in s.dimensions}

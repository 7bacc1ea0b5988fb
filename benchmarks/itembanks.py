"""Item-bank benchmark: scoreplex against the simple baselines on the shapes real item banks have (issue 12).

    python benchmarks/itembanks.py --out docs/results                 # both parts, all 10 items
    python benchmarks/itembanks.py --parts fewshot --shots 25 --items 1,2

Two parts, both derived from ASAP-SAS (read in place) so anyone can reproduce them:

* **few-shot** — per item, ``n`` (25, 50) training responses drawn at random (seeded) from ``train.tsv``, scored
  on the *full* test set. Per-item LoRA (the library's defaults, including its handling of items too small for a
  validation split), the cross-item model (one LoRA on all items, the item's question paired with the response;
  per-item heads, or one shared ordinal latent, the headline variant chosen by its cross-validated pooled QWK; its
  epochs chosen by 5-fold cross-validation over all items, then refitted on all responses, each item's decoding
  fitted on its out-of-fold probabilities), the lexical baseline (TF-IDF + logistic regression) and the length-only
  baseline.
* **long-input proxy** — ASAP-SAS answers are short, so long answers are simulated by a small ``max_length``
  (default 48 tokens, where about half the answers are cut): head-only suites trained with truncation, with
  overlapping windows, and at the full length (the 99th-percentile length), all on the same split. Windows
  "recover" ``(windows - truncated) / (full - truncated)`` of the QWK that truncation lost. The suites stack the
  lexical model as ``train`` does by default; it reads the whole response, so the proxy is run again without it at
  each of ``--encoder-lengths`` (default 48): the encoder's long-input mode alone. ``--window-pools`` and
  ``--encoder-window-pools`` add windows pooled otherwise than by their mean (``mean+max``) beside them.

Models are selected on validation data only; ``test.tsv`` is used once per model, for the figures. Every finished
model's result is kept in ``--work/results.json``, so an interrupted run resumes. Writes ``itembanks.json``,
``itembanks.md`` and ``itembanks.png`` into ``--out``. A figure not measured is ``null``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from _common import whole_numbers
from scoreplex.backbone import DEFAULT_BACKBONE, Backbone
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.dataset import TaskData
from scoreplex.data.splits import train_val_split
from scoreplex.metrics import quadratic_weighted_kappa
from scoreplex.suite import write_json_atomic

LABELS = {
    "cross_item": "cross-item LoRA (question + response)",
    "cross_item_ordinal": "cross-item LoRA, shared ordinal head",
    "cross_item_ordinal_length": "cross-item LoRA, shared ordinal head + length",
    "cross_item_ordinal_length_12ep": "cross-item LoRA, shared ordinal head + length, up to 12 epochs",
    "lora": "per-item LoRA",
    "lexical": "TF-IDF + LR (per item)",
    "length": "length only (per item)",
    "moe": "UniMoE student (from the LoRA suite)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results", help="folder for itembanks.{json,md,png}")
    ap.add_argument("--work", default="runs/itembanks", help="folder for suites and partial results (resumable)")
    ap.add_argument("--parts", default="fewshot,longproxy", help="comma-separated: fewshot, longproxy")
    ap.add_argument(
        "--shots", default="25,50", type=whole_numbers, help="training responses per item in the few-shot part"
    )
    ap.add_argument(
        "--methods",
        default="cross_item,cross_item_ordinal,cross_item_ordinal_length,cross_item_ordinal_length_12ep,lora,lexical,"
        "length,moe",
        help="few-shot methods",
    )
    ap.add_argument("--items", default="", type=whole_numbers, help="comma-separated item numbers (default all 10)")
    ap.add_argument("--pair-length", type=int, default=128, help="max_length of the cross-item question+response pairs")
    ap.add_argument("--proxy-length", type=int, default=48, help="max_length of the long-input proxy (tokens)")
    ap.add_argument("--window-stride", type=int, default=24, help="tokens between window starts in the proxy")
    ap.add_argument(
        "--encoder-lengths",
        type=whole_numbers,
        default="48",
        help="max_lengths of the proxy run again without the stacked lexical model (the encoder's long-input mode "
        "alone); empty: skip",
    )
    ap.add_argument(
        "--encoder-stride", type=int, default=0, help="window stride of those runs (0: half the max_length)"
    )
    ap.add_argument(
        "--window-pools",
        default="mean",
        help="window poolings of the proxy's stacked runs: mean (key longproxy/windows), mean+max "
        "(longproxy/windows-mean+max)",
    )
    ap.add_argument(
        "--encoder-window-pools",
        default="mean",
        help="window poolings of those runs, comma-separated: mean (key .../windows), mean+max (.../windows-mean+max)",
    )
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE, help="backbone name or folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas or $ASAP_SAS)")
    ap.add_argument(
        "--cv-folds",
        type=int,
        default=5,
        help="k-fold epoch choice on small items (per-item LoRA: per item; cross-item: over all items at once)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="a paragraph for the report: where its figures come from, what to know")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    return ap.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------------------------


def subsample(data: TaskData, n: int, seed: int) -> TaskData:
    """``n`` responses of ``data`` drawn at random without replacement (seeded), redrawn (up to 100 times) until
    at least two score classes occur, so every method has something to learn."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        idx = np.sort(rng.choice(len(data.texts), size=min(n, len(data.texts)), replace=False))
        if len(np.unique(data.labels[idx, 0])) >= 2:
            break
    return TaskData(
        spec=data.spec,
        ids=[data.ids[i] for i in idx],
        texts=[data.texts[i] for i in idx],
        labels=data.labels[idx],
        second=None if data.second is None else data.second[idx],
        source=data.source,
    )


def test_qwk(spec, truth: np.ndarray, pred: np.ndarray) -> float | None:
    """Test QWK on the item's whole scale; None where it is undefined (one class in truth and prediction)."""
    t, p = np.asarray(truth).reshape(-1), np.asarray(pred).reshape(-1)
    if len(np.unique(np.concatenate([t, p]))) < 2:
        return None
    return float(quadratic_weighted_kappa(t, p, labels=list(range(spec.dimensions[0].num_classes))))


# -- few-shot methods: each returns {task id: (N_test,) predicted class} ---------------------------------------------


def suite_predictions(suite_dir: Path, backbone, test: Mapping[str, TaskData]) -> dict[str, np.ndarray]:
    from scoreplex.scorer import SuiteScorer

    scorer = SuiteScorer(suite_dir, backbone)
    return {tid: scorer.predict(tid, d.texts).labels[:, 0] for tid, d in test.items()}


def run_lora(train, test, work: Path, bb, args) -> dict[str, np.ndarray]:
    from scoreplex.training.suite import TrainOptions, default_config, train_suite

    options = TrainOptions(
        method="lora",
        backbone=args.backbone,
        config=default_config("lora", seed=args.seed),
        cv_folds=args.cv_folds,  # items this small choose their epochs by k-fold cross-validation
    )
    train_suite(train, work / "lora", options, backbone=bb)
    return suite_predictions(work / "lora", bb, test)


CROSS_ITEM_VARIANTS: dict[str, dict] = {
    "cross_item": {"head": "per-item"},
    "cross_item_ordinal": {"head": "shared-ordinal"},
    "cross_item_ordinal_length": {"head": "shared-ordinal", "length_feature": True},
    "cross_item_ordinal_length_12ep": {"head": "shared-ordinal", "length_feature": True, "epochs": 12},
}
"""The cross-item variants (method key -> ``CrossItemSettings.head``, the length feature, and a larger epoch budget
where the 6-epoch cross-validated curve still rose at its last epoch); the headline one is chosen on validation."""


def cross_item_runner(method: str) -> Callable:
    """The cross-item model of ``CROSS_ITEM_VARIANTS[method]``; its suite goes to ``work/method``."""

    def run(train, test, work: Path, bb, args) -> dict[str, np.ndarray]:
        from dataclasses import replace

        from scoreplex.crossitem import train_cross_item
        from scoreplex.methods.base import MethodSettings
        from scoreplex.training.suite import TrainOptions, default_config

        variant = CROSS_ITEM_VARIANTS[method]
        config = default_config("cross-item", seed=args.seed)
        options = TrainOptions(
            method="cross-item",
            backbone=args.backbone,
            config=replace(config, epochs=variant.get("epochs", config.epochs)),
            settings=MethodSettings(
                extra={"head": variant["head"]}, length_feature=variant.get("length_feature", False)
            ),
            max_length=args.pair_length,  # question + response: the 99% pair length (392 here) costs 3x the time
            cv_folds=args.cv_folds,  # few-shot items: the joint model's epochs by k-fold CV over all items
        )
        if not (work / method / "manifest.json").is_file():  # written last: a finished suite is kept
            train_cross_item(train, work / method, options, backbone=bb)
        return suite_predictions(work / method, bb, test)

    return run


def cross_item_val_qwk(work: Path, method: str) -> float | None:
    """The pooled validation QWK of a trained cross-item suite's chosen epoch (its manifest): the cross-validated
    mean over folds when its epochs were chosen by cross-validation, else the held-out split's; None if absent."""
    path = work / method / "manifest.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8")).get("cross_item", {})
    if "cv" in record:
        return max(record["cv"]["mean_pooled_qwk"])
    return record.get("fit", {}).get("best_pooled_qwk")


def baseline_runner(name: str) -> Callable:
    """A few-shot method fitting the registered baseline ``name`` (scoreplex.baselines) per item."""

    def run(train, test, work: Path, bb, args) -> dict[str, np.ndarray]:
        from scoreplex.baselines import get_baseline

        fit = get_baseline(name).fit
        return {tid: fit(d.spec, d.texts, d.labels).predict(test[tid].texts)[:, 0] for tid, d in train.items()}

    return run


def run_moe(train, test, work: Path, bb, args) -> dict[str, np.ndarray]:
    """The UniMoE-Guided student (3 MiniLM layers + the MoE block, the library's defaults) distilled from the
    per-item LoRA suite of the same run, on the same few responses (run ``lora`` first)."""
    from scoreplex.moe.runs import run_distill

    teachers = work / "lora"
    if not (teachers / "manifest.json").is_file():
        raise SystemExit(f"the MoE student distils the per-item LoRA suite: run --methods lora first ({teachers}).")
    if not (work / "moe" / "manifest.json").is_file():
        run_distill(str(teachers), train, work / "moe", student_backbone=args.backbone)
    return suite_predictions(work / "moe", None, test)


FEWSHOT: dict[str, Callable] = {
    "cross_item": cross_item_runner("cross_item"),
    "cross_item_ordinal": cross_item_runner("cross_item_ordinal"),
    "cross_item_ordinal_length": cross_item_runner("cross_item_ordinal_length"),
    "cross_item_ordinal_length_12ep": cross_item_runner("cross_item_ordinal_length_12ep"),
    "lora": run_lora,
    "lexical": baseline_runner("lexical"),
    "length": baseline_runner("length"),
    "moe": run_moe,
}


# -- resumable results -----------------------------------------------------------------------------------------------


class Results:
    """``--work/results.json``: one entry per finished (part, setting, method), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


def fewshot(args, bb, train_all, test_all, results: Results) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for n in args.shots:
        train = {tid: subsample(d, n, args.seed + i) for i, (tid, d) in enumerate(train_all.items())}
        for method in methods:
            key = f"fewshot{n}/{method}"
            if results.get(key) is not None:
                print(f"[{key}] done before; skipped", flush=True)
                continue
            print(f"[{key}] training on {n} responses per item, {len(train)} items", flush=True)
            t0 = time.perf_counter()
            preds = FEWSHOT[method](train, test_all, Path(args.work) / f"fewshot{n}", bb, args)
            per_item = {tid: test_qwk(d.spec, d.labels[:, 0], preds[tid]) for tid, d in test_all.items()}
            entry = {"per_item": per_item, "seconds": time.perf_counter() - t0}
            if method in CROSS_ITEM_VARIANTS:
                entry["val_qwk"] = cross_item_val_qwk(Path(args.work) / f"fewshot{n}", method)
            results.put(key, entry)
            print(f"[{key}] mean test QWK {mean(per_item.values())}", flush=True)


# -- long-input proxy -------------------------------------------------------------------------------------------------


def longproxy(args, bb, train_all, test_all, results: Results) -> None:
    """Head-only suites at a small ``max_length``, truncated and in windows, and at the full length. First as the
    library trains them (the stacked lexical model included: it reads the whole response, so it hides part of what
    truncation loses), then for each of ``--encoder-lengths`` without the lexical model: the encoder alone."""
    from scoreplex.encoding import LongInputs
    from scoreplex.training.suite import TrainOptions, default_config, pick_max_length, train_suite

    splits = {tid: train_val_split(d, val_fraction=0.1, seed=args.seed) for tid, d in train_all.items()}
    train_sets = {tid: s[0] for tid, s in splits.items()}
    val_sets = {tid: s[1] for tid, s in splits.items()}
    full_length, _ = pick_max_length(bb, train_sets)
    runs = {  # key: (max_length, long_inputs, window stride, lexical)
        "longproxy/truncated": (args.proxy_length, "truncate", None, True),
        "longproxy/windows": (args.proxy_length, "windows", args.window_stride, True),
        "longproxy/full": (full_length, "truncate", None, True),
    }
    for p in [p.strip() for p in args.window_pools.split(",") if p.strip() and p.strip() != "mean"]:
        runs[f"longproxy/windows-{p}"] = (args.proxy_length, "windows", args.window_stride, True, p)
    lengths = args.encoder_lengths
    if lengths:
        runs["longproxy-encoder/full"] = (full_length, "truncate", None, False)
    pools = [p.strip() for p in args.encoder_window_pools.split(",") if p.strip()]
    for n in lengths:
        runs[f"longproxy-encoder{n}/truncated"] = (n, "truncate", None, False)
        for p in pools:
            name = "windows" if p == "mean" else f"windows-{p}"
            runs[f"longproxy-encoder{n}/{name}"] = (n, "windows", args.encoder_stride or max(1, n // 2), False, p)
    for key, (max_length, mode, stride, lexical, *pool) in runs.items():
        if results.get(key) is not None:
            print(f"[{key}] done before; skipped", flush=True)
            continue
        lex = "with" if lexical else "without"
        print(f"[{key}] head-only, max_length {max_length}, {mode}, {lex} the lexical model", flush=True)
        t0 = time.perf_counter()
        options = TrainOptions(
            method="head",
            backbone=args.backbone,
            max_length=max_length,
            config=default_config("head", seed=args.seed),
            long_inputs=LongInputs(mode, stride=stride, pool=pool[0] if pool else "mean"),
            lexical=lexical,
        )
        folder = Path(args.work) / key
        train_suite(train_sets, folder, options, val_sets=val_sets, backbone=bb)
        preds = suite_predictions(folder, bb, test_all)
        per_item = {tid: test_qwk(d.spec, d.labels[:, 0], preds[tid]) for tid, d in test_all.items()}
        results.put(
            key,
            {
                "per_item": per_item,
                "max_length": max_length,
                "window_stride": stride,
                **({"window_pool": pool[0]} if pool else {}),
                "lexical": lexical,
                "seconds": time.perf_counter() - t0,
            },
        )
        print(f"[{key}] mean test QWK {mean(per_item.values())}", flush=True)


# -- report ------------------------------------------------------------------------------------------------------------


def mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(results: Results, items: list[str]) -> dict:
    """The issue's top-level keys (``null`` where not measured) plus every per-item figure."""

    def m(key: str) -> float | None:
        entry = results.get(key)
        return None if entry is None else mean(entry["per_item"].get(t) for t in items)

    summary: dict = {}
    for n in (25, 50):
        for method in FEWSHOT:
            summary[f"fewshot{n}_{method}_qwk"] = m(f"fewshot{n}/{method}")
        chosen = chosen_cross_item(results, n)
        # the headline cross-item figures are the chosen variant's; the per-item-head variant keeps its own key
        summary[f"fewshot{n}_cross_item_per_item_head_qwk"] = summary[f"fewshot{n}_cross_item_qwk"]
        summary[f"fewshot{n}_cross_item_variant"] = chosen
        summary[f"fewshot{n}_cross_item_qwk"] = None if chosen is None else m(f"fewshot{n}/{chosen}")
        summary[f"fewshot{n}_items_won"] = None if chosen is None else items_won(results, n, items, chosen)
        for method in CROSS_ITEM_VARIANTS:
            summary[f"fewshot{n}_{method}_items_won"] = items_won(results, n, items, method)
            entry = results.get(f"fewshot{n}/{method}")
            summary[f"fewshot{n}_{method}_val_qwk"] = None if entry is None else entry.get("val_qwk")
    for name in ("truncated", "windows", "full"):
        summary[f"longproxy_{name}_qwk"] = m(f"longproxy/{name}")
    t, w, f = (summary[f"longproxy_{k}_qwk"] for k in ("truncated", "windows", "full"))
    summary["longproxy_recovered"] = (w - t) / (f - t) if None not in (t, w, f) and f != t else None
    for pool in extra_pools(results):
        w = summary[f"longproxy_windows_{pool}_qwk"] = m(f"longproxy/windows-{pool}")
        summary[f"longproxy_recovered_{pool}"] = (w - t) / (f - t) if None not in (t, w, f) and f != t else None
    encoder: dict = {}
    f = m("longproxy-encoder/full")
    for key in sorted(k for k in results.data if k.startswith("longproxy-encoder") and k.endswith("/truncated")):
        n = key.split("/")[0].removeprefix("longproxy-encoder")
        t, w = m(key), m(f"longproxy-encoder{n}/windows")
        windows = results.get(f"longproxy-encoder{n}/windows")
        encoder[n] = {
            "window_stride": None if windows is None else windows["window_stride"],
            "truncated_qwk": t,
            "windows_qwk": w,
            "full_qwk": f,
            "recovered": (w - t) / (f - t) if None not in (t, w, f) and f != t else None,
        }
        for pool in extra_pools(results, f"longproxy-encoder{n}"):
            w = m(f"longproxy-encoder{n}/windows-{pool}")
            encoder[n][f"windows_{pool}_qwk"] = w
            encoder[n][f"recovered_{pool}"] = (w - t) / (f - t) if None not in (t, w, f) and f != t else None
    summary["longproxy_encoder_only"] = encoder
    return summary


def extra_pools(results: Results, run: str = "longproxy") -> list[str]:
    """The window poolings other than ``mean`` run for the proxy ``run`` (``longproxy``: the stacked suites;
    ``longproxy-encoder48``: the encoder alone at max_length 48), from their keys ``<run>/windows-<pool>``."""
    prefix = f"{run}/windows-"
    return sorted(k.removeprefix(prefix) for k in results.data if k.startswith(prefix))


def chosen_cross_item(results: Results, n: int) -> str | None:
    """The cross-item variant with the best pooled validation QWK (test QWK is not looked at); with one variant
    measured, that one; None if none. A variant measured before validation QWK was recorded counts as -inf."""
    measured = [m for m in CROSS_ITEM_VARIANTS if results.get(f"fewshot{n}/{m}") is not None]
    if not measured:
        return None
    val = {m: results.get(f"fewshot{n}/{m}").get("val_qwk") for m in measured}
    return max(measured, key=lambda m: -np.inf if val[m] is None else val[m])


def items_won(results: Results, n: int, items: list[str], cross: str = "cross_item") -> int | None:
    """Items where the cross-item model's test QWK beats both per-item LoRA and the TF-IDF baseline."""
    entries = [results.get(f"fewshot{n}/{m}") for m in (cross, "lora", "lexical")]
    if any(e is None for e in entries):
        return None
    cross, lora, lex = (e["per_item"] for e in entries)
    return sum(
        1
        for t in items
        if cross.get(t) is not None and all(other.get(t) is None or cross[t] > other[t] for other in (lora, lex))
    )


def args_length(results: Results) -> str:
    entry = results.get("longproxy/truncated")
    return "n/a" if entry is None else str(entry["max_length"])


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def write_report(out: Path, summary: dict, results: Results, items: list[str], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {**summary, "per_item": results.data, "items": items, "meta": meta}
    write_json_atomic(out / "itembanks.json", payload)
    lines = [
        "# Item banks: few-shot items and long answers against the simple baselines",
        "",
        f"Reproduce: `{meta['command']}` ({meta['machine']}, {meta['date']}). Test QWK on the full ASAP-SAS test set;",
        "`n/a` = not measured (or QWK undefined for that item).",
        "",
        *([meta["note"], ""] if meta.get("note") else []),
    ]
    for n in (25, 50):
        methods = [m for m in FEWSHOT if results.get(f"fewshot{n}/{m}") is not None]
        if not methods:
            continue
        lines += [f"## Few-shot: {n} scored responses per item", ""]
        lines.append("| item | " + " | ".join(LABELS[m] for m in methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))
        for t in items:
            row = [fmt(results.get(f"fewshot{n}/{m}")["per_item"].get(t)) for m in methods]
            lines.append(f"| {t} | " + " | ".join(row) + " |")
        means = [fmt(mean(results.get(f"fewshot{n}/{m}")["per_item"].get(t) for t in items)) for m in methods]
        lines.append("| **mean** | " + " | ".join(means) + " |")
        secs = [f"{results.get(f'fewshot{n}/{m}')['seconds']:.0f}" for m in methods]
        lines.append("| seconds (train + test) | " + " | ".join(secs) + " |")
        won, chosen = summary[f"fewshot{n}_items_won"], summary[f"fewshot{n}_cross_item_variant"]
        lines += [
            "",
            f"Items where the cross-item model ({LABELS[chosen] if chosen else 'n/a'}: the variant with the best "
            f"pooled validation QWK; test QWK not looked at) beats per-item LoRA and TF-IDF: {fmt(won, 0)} of "
            f"{len(items)}.",
        ]
        for method in CROSS_ITEM_VARIANTS:
            if results.get(f"fewshot{n}/{method}") is not None:
                lines.append(
                    f"- {LABELS[method]}: pooled validation QWK "
                    f"{fmt(summary[f'fewshot{n}_{method}_val_qwk'])}, items won "
                    f"{fmt(summary[f'fewshot{n}_{method}_items_won'], 0)}."
                )
        lines.append("")
    names = [
        k
        for k in ("truncated", "windows", *(f"windows-{p}" for p in extra_pools(results)), "full")
        if results.get(f"longproxy/{k}") is not None
    ]
    if names:
        lines += ["## Long-input proxy (head-only suites)", ""]
        heads = [f"{k.replace('-', ', ')} (max_length {results.get(f'longproxy/{k}')['max_length']})" for k in names]
        lines.append("| item | " + " | ".join(heads) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for t in items:
            lines.append(
                f"| {t} | " + " | ".join(fmt(results.get(f"longproxy/{k}")["per_item"].get(t)) for k in names) + " |"
            )
        means = [fmt(summary[f"longproxy_{k.replace('-', '_')}_qwk"]) for k in names]
        lines.append("| **mean** | " + " | ".join(means) + " |")
        t, f = summary["longproxy_truncated_qwk"], summary["longproxy_full_qwk"]
        lost = None if None in (t, f) else f - t
        lines += [
            "",
            f"Truncation at {args_length(results)} tokens costs {fmt(lost)} mean QWK against the full length; windows "
            f"recover {fmt(summary['longproxy_recovered'])} of that loss (a ratio that means little when the loss "
            "itself is within run-to-run noise, about 0.01)"
            + "".join(f"; pooled {p}, {fmt(summary[f'longproxy_recovered_{p}'])}" for p in extra_pools(results))
            + ".",
            "These suites stack the lexical model, which reads the whole response whatever the encoder's max_length,",
            "so part of what truncation loses comes back through it.",
            "",
        ]
    encoder = summary.get("longproxy_encoder_only") or {}
    if encoder:
        lengths = sorted(encoder, key=int, reverse=True)
        columns = {
            n: ["truncated", "windows", *(f"windows-{p}" for p in extra_pools(results, f"longproxy-encoder{n}"))]
            for n in lengths
        }

        def title(n: str, k: str) -> str:
            stride = encoder[n]["window_stride"]
            return {"truncated": f"truncated {n}", "windows": f"windows {n} (stride {stride})"}.get(
                k, f"windows {n}, {k.removeprefix('windows-')} (stride {stride})"
            )

        lines += [
            "## Long-input proxy, the encoder alone (head-only suites without the lexical model)",
            "",
            "| item | " + " | ".join(title(n, k) for n in lengths for k in columns[n]) + " | full |",
            "|---|" + "---:|" * (sum(len(c) for c in columns.values()) + 1),
        ]
        for t in items:
            cells = []
            for n in lengths:
                for k in columns[n]:
                    entry = results.get(f"longproxy-encoder{n}/{k}")
                    cells.append(fmt(None if entry is None else entry["per_item"].get(t)))
            full = results.get("longproxy-encoder/full")
            cells.append(fmt(None if full is None else full["per_item"].get(t)))
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        means = [fmt(encoder[n][f"{k.replace('-', '_')}_qwk"]) for n in lengths for k in columns[n]]
        lines.append("| **mean** | " + " | ".join(means) + f" | {fmt(encoder[lengths[0]]['full_qwk'])} |")
        lines.append("")
        for n in lengths:
            e = encoder[n]
            lost = None if None in (e["truncated_qwk"], e["full_qwk"]) else e["full_qwk"] - e["truncated_qwk"]
            lines.append(
                f"- max_length {n}: truncation costs {fmt(lost)} mean QWK; windows recover {fmt(e['recovered'])} of it."
            )
            for p in extra_pools(results, f"longproxy-encoder{n}"):
                lines.append(
                    f"- max_length {n}, windows pooled {p} (the pooling chosen on validation in "
                    f"[window-pooling.md](window-pooling.md)): recover {fmt(e[f'recovered_{p}'])} of it."
                )
        lines.append("")
    (out / "itembanks.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(out / "itembanks.png", summary, results, items)


def plot(path: Path, summary: dict, results: Results, items: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = [n for n in (25, 50) if any(results.get(f"fewshot{n}/{m}") for m in FEWSHOT)]
    if not shots:
        return
    fig, axes = plt.subplots(1, len(shots), figsize=(6.5 * len(shots), 4.2), squeeze=False)
    for ax, n in zip(axes[0], shots, strict=True):
        methods = [m for m in FEWSHOT if results.get(f"fewshot{n}/{m}") is not None]
        x = np.arange(len(items))
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            vals = [results.get(f"fewshot{n}/{m}")["per_item"].get(t) for t in items]
            ax.bar(x + j * width, [np.nan if v is None else v for v in vals], width, label=LABELS[m])
        ax.set_xticks(x + 0.4 - width / 2, [t.removeprefix("asap-") for t in items])
        ax.set_xlabel("ASAP-SAS item")
        ax.set_ylabel("test QWK")
        ax.set_title(f"{n} scored responses per item")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _without_note(argv: list[str]) -> list[str]:
    """``argv`` without ``--note TEXT`` (the report prints the note itself, not in the command)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    items = args.items or None
    train_all = load_asap_sas(args.data, split="train", items=items)
    test_all = load_asap_sas(args.data, split="test", items=items)
    bb = Backbone.load(args.backbone)
    results = Results(Path(args.work) / "results.json")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if "fewshot" in parts:
        fewshot(args, bb, train_all, test_all, results)
    if "longproxy" in parts:
        longproxy(args, bb, train_all, test_all, results)
    tids = list(test_all)
    summary = summarise(results, tids)
    meta = {
        "command": "python benchmarks/itembanks.py " + shlex.join(_without_note(argv)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note or None,
    }
    write_report(Path(args.out), summary, results, tids, meta)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

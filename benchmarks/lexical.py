"""Lexical TF-IDF model on ASAP-SAS (issue 11, item 3): alone on validation, and stacked with the neural head.

    python benchmarks/lexical.py --out docs/results --work runs/lexical --recipe runs/recipe

Per item (all 10): the split of the project (``train_val_split(val_fraction=0.1, seed=0)`` of train.tsv; test.tsv is
never read), a :class:`~scoreplex.lexical.LexicalModel` fitted on the train part with fixed ``C = 4`` and with ``C``
chosen by the internal 3-fold CV, scored on the validation part (QWK of the argmax), with fit / scoring times and
the stored size (safetensors + JSON). Stacking: for every ``<recipe>/<config>/asap-<i>/`` holding ``val_logits.npy``
and ``val_labels.npy`` (the neural head's validation logits, same split and row order), neural alone vs stacked
QWK, with :func:`~scoreplex.lexical.stack_weight`'s cross-fitted keep/drop decision. Also a simulation of that rule
(how often it keeps pure noise, how often a weak real signal), the source of the figures in its docstring.

One process, one thread (``threadpoolctl``). Per-item results are cached under ``--work``, so a rerun resumes and
picks up neural logits that appeared since.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from _common import cached_json, whole_numbers
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.lexical import STACK_RULE, LexicalConfig, LexicalModel, stack_weight
from scoreplex.metrics import quadratic_weighted_kappa
from scoreplex.suite import write_json_atomic

DEFAULT_C = "fixed"
"""Which fit the stacking uses and the module's default: "fixed" (C = 4) or "cv" (see the report)."""


def stored_bytes(model: LexicalModel) -> tuple[int, int]:
    """(safetensors bytes, JSON bytes) of the model as a suite would store it."""
    from safetensors.torch import save

    tensors, config = model.to_tensors()
    return len(save(tensors)), len(json.dumps(config).encode())


def run_item(tid: str, train, val, work: Path) -> dict:
    """Fit both variants on ``train``; score ``val``; keep the default variant's validation log-probabilities."""
    result: dict = {"item": tid, "n_train": len(train), "n_val": len(val), "num_classes": train.spec.class_counts[0]}
    k = train.spec.class_counts[0]
    for name, config in (("fixed", LexicalConfig(C=4.0)), ("cv", LexicalConfig(C=None))):
        t0 = time.perf_counter()
        model = LexicalModel.fit(train.spec, train.texts, train.labels, config)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lp = model.log_probs(val.texts)[0]  # (N_val, K)
        score_s = time.perf_counter() - t0
        st_bytes, json_bytes = stored_bytes(model)
        result[name] = {
            "val_qwk": quadratic_weighted_kappa(val.labels[:, 0], lp.argmax(axis=1), labels=range(k)),
            "C": model.info["dimensions"][0]["C"],
            "fit_s": round(fit_s, 2),
            "score_ms_per_row": round(1000 * score_s / len(val), 3),
            "features": model.num_features,
            "safetensors_bytes": st_bytes,
            "json_bytes": json_bytes,
        }
        if name == DEFAULT_C:
            np.save(work / f"{tid}.val_logprobs.npy", lp)
        r = result[name]
        print(f"{tid} [{name}] val QWK {r['val_qwk']:.3f} (C {r['C']}, {fit_s:.1f} s)", flush=True)
    return result


def stacking(recipe: Path, work: Path, splits: dict) -> list[dict]:
    """Neural alone vs stacked, for every recipe run that has left validation logits."""
    from scipy.special import log_softmax

    rows = []
    for folder in sorted(recipe.glob("*/asap-*")):
        logits_path, labels_path = folder / "val_logits.npy", folder / "val_labels.npy"
        tid = folder.name
        lex_path = work / f"{tid}.val_logprobs.npy"
        if not (logits_path.is_file() and labels_path.is_file() and lex_path.is_file()):
            continue
        val = splits[tid][1]
        logits = np.load(logits_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False).reshape(len(val), -1)
        lexical = np.load(lex_path, allow_pickle=False)
        if logits.shape != lexical.shape or not np.array_equal(labels, val.labels):
            print(f"skip {folder}: its validation rows do not match train_val_split(seed=0)", flush=True)
            continue
        weight, report = stack_weight([log_softmax(logits, axis=1)], [lexical], labels, val.spec)
        rows.append({"config": folder.parent.name, "item": tid, "weight": weight, **report})
        print(
            f"stack {folder.parent.name}/{tid}: neural {report['neural_qwk']:.3f}, lexical {report['lexical_qwk']:.3f},"
            f" best w {report['best_weight']} -> {report['best_qwk']:.3f}, kept={report['kept']}",
            flush=True,
        )
    return rows


def simulate(trials: int) -> list[dict]:
    """How often :func:`stack_weight` keeps pure-noise lexical log-probs, and a weak real signal (synthetic, K = 4).

    Neural logits ``2 e_y + N(0, 1.5^2)``; noise ``N(0, 2^2)``; weak signal ``e_y + N(0, 1.5^2)`` (independent of
    the neural noise), both through log_softmax.
    """
    from scipy.special import log_softmax

    from scoreplex.tasks import TaskSpec

    spec = TaskSpec.ordinal("sim", 3)
    out = []
    for n in (150, 400):
        for kind in ("noise", "weak signal"):
            for repeats in (1, 5):
                kept = 0
                for seed in range(trials):
                    rng = np.random.default_rng(seed)
                    y = rng.integers(0, 4, n)
                    neural = 2.0 * np.eye(4)[y] + rng.normal(0, 1.5, (n, 4))
                    lex = rng.normal(0, 2.0, (n, 4)) if kind == "noise" else np.eye(4)[y] + rng.normal(0, 1.5, (n, 4))
                    w, _ = stack_weight([neural], [log_softmax(lex, axis=1)], y, spec, repeats=repeats)
                    kept += w > 0
                out.append({"rows": n, "lexical": kind, "repeats": repeats, "kept_share": kept / trials})
    return out


def markdown(report: dict) -> str:
    items = report["items"]
    lines = [
        "# Lexical TF-IDF model and stacking on ASAP-SAS (issue 11, item 3)",
        "",
        f"Reproduce: `{report['command']}` ({report['date']}; {report['machine']}; one thread).",
        "",
        "Model (`scoreplex.lexical`): word 1-2-gram + `char_wb` 2-5-gram TF-IDF (sublinear tf, min_df 2, at most "
        "20,000 columns each), logistic regression (L2, lbfgs, multinomial) per rubric dimension. Validation split: "
        "`train_val_split(val_fraction=0.1, seed=0)` of train.tsv; test.tsv not read. QWK of the argmax, "
        "labels 0..K-1.",
        "",
        "## Lexical model alone (validation QWK)",
        "",
        "| item | n train/val | C = 4 | CV-chosen C | (C) | fit s (C = 4) | fit s (CV) | score ms/row | features "
        "| stored KB (tensors + JSON) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in items:
        f, c = r["fixed"], r["cv"]
        kb = (f["safetensors_bytes"] + f["json_bytes"]) / 1024
        lines.append(
            f"| {r['item']} | {r['n_train']}/{r['n_val']} | {f['val_qwk']:.3f} | {c['val_qwk']:.3f} | {c['C']:g} "
            f"| {f['fit_s']:.1f} | {c['fit_s']:.1f} | {f['score_ms_per_row']:.2f} | {f['features']:,} | {kb:,.0f} |"
        )
    lines += [
        f"| **mean** | | **{report['mean_val_qwk']['fixed']:.3f}** | **{report['mean_val_qwk']['cv']:.3f}** | | "
        f"{report['total_fit_s']['fixed']:.0f} total | {report['total_fit_s']['cv']:.0f} total | | | |",
        "",
        report["c_choice"],
        "",
        "## Stacking with the neural head (validation QWK)",
        "",
        f"Rule (`stack_weight`): {STACK_RULE}",
        "",
    ]
    stack = report["stacking"]
    if stack:
        lines += [
            "| neural run | item | neural alone | lexical alone | best w (in-sample) | stacked at best w (in-sample) "
            "| cross-fitted stacked (mean of 5 splits) | splits passed | kept | weight |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for s in stack:
            passed = sum(r["passed"] for r in s["repetitions"])
            lines.append(
                f"| {s['config']} | {s['item']} | {s['neural_qwk']:.3f} | {s['lexical_qwk']:.3f} "
                f"| {s['best_weight']:g} | {s['best_qwk']:.3f} | {s['oof_stacked_qwk']:.3f} "
                f"| {passed}/{len(s['repetitions'])} | {'yes' if s['kept'] else 'no'} | {s['weight']:g} |"
            )
        lines += [
            "",
            "The neural validation QWK is itself slightly optimistic (that split chose the neural run's best epoch). "
            "'In-sample' columns choose and judge w on the same rows; the cross-fitted column is what the keep/drop "
            "decision uses.",
        ]
    else:
        lines.append(f"No neural validation logits were found under `{report['recipe']}` when this ran.")
    lines += [
        "",
        "## The keep/drop rule on synthetic data",
        "",
        f"Share of {report['simulation_trials']} trials in which `stack_weight` keeps the lexical model (K = 4; "
        "neural logits 2·onehot(y) + N(0, 1.5²); noise: N(0, 2²); weak signal: onehot(y) + N(0, 1.5²), independent "
        "of the neural noise). One 2-fold split (repeats = 1) vs the default 5 repeated splits that must all agree.",
        "",
        "| validation rows | lexical | repeats = 1 | repeats = 5 |",
        "|---:|---|---:|---:|",
    ]
    sim = report["simulation"]
    for n in sorted({s["rows"] for s in sim}):
        for kind in ("noise", "weak signal"):
            v = {s["repeats"]: s["kept_share"] for s in sim if s["rows"] == n and s["lexical"] == kind}
            lines.append(f"| {n} | {kind} | {v[1]:.0%} | {v[5]:.0%} |")
    lines += ["", report["verdict"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--out", default="docs/results", help="folder for lexical.{json,md}")
    ap.add_argument("--work", default="runs/lexical", help="cache of per-item results (resumable)")
    ap.add_argument("--recipe", default="runs/recipe", help="folder of neural runs with val_logits.npy")
    ap.add_argument("--items", default="1,2,3,4,5,6,7,8,9,10", type=whole_numbers)
    ap.add_argument("--simulation-trials", type=int, default=100)
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    items = [f"asap-{i}" for i in args.items]
    data = load_asap_sas(args.data, split="train", items=items)
    splits = {tid: train_val_split(d, val_fraction=0.1, seed=0) for tid, d in data.items()}
    results = []
    for tid in items:
        train, val = splits[tid]
        results.append(cached_json(work / f"{tid}.json", lambda t=tid, a=train, b=val: run_item(t, a, b, work)))
    sim = cached_json(work / f"simulation-{args.simulation_trials}.json", lambda: simulate(args.simulation_trials))
    mean = {v: float(np.mean([r[v]["val_qwk"] for r in results])) for v in ("fixed", "cv")}
    wins = sum(r["fixed"]["val_qwk"] >= r["cv"]["val_qwk"] for r in results)
    c_choice = (
        f"Fixed C = 4 vs C chosen per item by 3-fold CV on the train part (grid 0.25, 1, 4, 16; QWK): mean "
        f"{mean['fixed']:.3f} vs {mean['cv']:.3f}; C = 4 is at least as good on {wins} of {len(results)} items, and "
        f"the CV costs {sum(r['cv']['fit_s'] for r in results) / sum(r['fixed']['fit_s'] for r in results):.1f}x "
        f"the fit time. The module's default is "
        f"{'C = 4 (LexicalConfig.C = 4.0)' if DEFAULT_C == 'fixed' else 'the CV'}; the stacking below uses it."
    )
    stack = stacking(Path(args.recipe), work, splits)
    if stack:
        kept = [s for s in stack if s["kept"]]
        verdict = (
            f"Verdict: the lexical model is kept (w > 0) for {len(kept)} of {len(stack)} neural runs "
            + ("(" + ", ".join(f"{s['config']}/{s['item']} w={s['weight']:g}" for s in kept) + ")" if kept else "")
            + ". Keep the stacking path only for tasks whose stack_weight is > 0; elsewhere the lexical tensors "
            "need not be stored."
        )
    else:
        verdict = "Verdict on stacking: pending (no neural validation logits yet); rerun the command once they exist."
    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/lexical.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "recipe": str(args.recipe),
        "default_c": DEFAULT_C,
        "items": results,
        "mean_val_qwk": mean,
        "total_fit_s": {v: float(sum(r[v]["fit_s"] for r in results)) for v in ("fixed", "cv")},
        "c_choice": c_choice,
        "stacking": stack,
        "stack_rule": STACK_RULE,
        "simulation_trials": args.simulation_trials,
        "simulation": sim,
        "verdict": verdict,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "lexical.json", report)
    (out / "lexical.md").write_text(markdown(report))
    print(f"wrote {out / 'lexical.json'} and {out / 'lexical.md'}")
    return report


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

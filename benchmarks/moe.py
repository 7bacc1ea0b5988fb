"""UniMoE-Guided on ASAP-SAS: one distilled multi-task MoE student vs per-task students, and adaptation to new items.

    python benchmarks/moe.py --teachers runs/asap-sas/full --out docs/results     # about 50 min on 2 cores

Teachers: the 10 per-item full fine-tunes of all-MiniLM-L6-v2 (6 layers) from ``make bench-asap``. Students use a
smaller encoder, the first 3 layers of the same MiniLM (a "small encoder" as in the paper's teacher/student setup).
Trained on 8 items; items 6 and 9 are held out for adaptation (see HELD_OUT). Compared on test.tsv (used once):
teachers, per-task students (a 3-layer full fine-tune per item), the MoE student with and without distillation, and
a plain multi-task student without the MoE block (ablation, with distillation). Adaptation: the distilled student
gets each held-out item with 10%, 25% and 100% of its training data (only a task embedding and a head train), against
a 3-layer per-task model trained from scratch on the same data. Models are selected on the validation split (10% of
train.tsv, the split the teachers used). Work is cached under ``--work`` so a rerun resumes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from _common import cached_json
from scoreplex.backbone import Backbone, truncated_backbone
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.splits import train_val_split
from scoreplex.encoding import encode_texts
from scoreplex.metrics import evaluate_task, paired_t_test
from scoreplex.moe import (
    MoEConfig,
    StudentObjective,
    adapt_to_task,
    compute_teacher_targets,
    load_student,
    save_student,
    train_student,
)
from scoreplex.moe.runs import STUDENT_CONFIG as DEFAULT_STUDENT_CONFIG
from scoreplex.predictions import decode, predict_logits
from scoreplex.scorer import SuiteScorer, evaluate_suite
from scoreplex.suite import Suite, write_json_atomic
from scoreplex.training.suite import TrainOptions, default_config, train_suite

HELD_OUT = ("asap-6", "asap-9")
WHY_HELD_OUT = (
    "One science item and one English item, each with a close relative among the 8 training items (6: cell-membrane "
    "transport, a biology item like 5, protein synthesis; 9: informational-article reading like 3 and 4), so "
    "adaptation is tested on new items of kinds the student has seen, the setting the paper's 'minimal additions' "
    "claim is about; both are among the largest items (about 1,600 training responses after the validation split), "
    "so the 10% subsets still hold about 160."
)
STUDENT_LAYERS = 3
EPOCHS = 3
STUDENT_CONFIG = replace(DEFAULT_STUDENT_CONFIG, epochs=EPOCHS)
PER_TASK_CONFIG = default_config("full", epochs=EPOCHS)
FRACTIONS = (0.1, 0.25, 1.0)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="runs/asap-sas/full")
    ap.add_argument("--data", default=os.environ.get("SCOREPLEX_ASAP", "../shared/data/asap-sas"))
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--work", default="runs/moe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--smoke", action="store_true", help="a quick check of the whole script (items 1, 2, 5, 6; 120 responses each)"
    )
    return ap.parse_args(argv)


def _smoke(datasets: dict, n: int) -> dict:
    keep = ("asap-1", "asap-2", "asap-5", "asap-6")
    return {t: d.subset(np.arange(min(n, len(d)))) for t, d in datasets.items() if t in keep}


def _test_metrics(model, bb, data, max_length) -> dict:
    enc = encode_texts(bb.tokenizer, data.texts, max_length)
    pred = decode(data.spec, data.ids, predict_logits(model, enc))
    return evaluate_task(data.spec, data.labels, pred.labels)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    train_all = load_asap_sas(args.data, split="train")
    test_all = load_asap_sas(args.data, split="test")
    if args.smoke:
        train_all, test_all = _smoke(train_all, 120), _smoke(test_all, 40)
        global HELD_OUT
        HELD_OUT = ("asap-6",)
    splits = {t: train_val_split(d, val_fraction=0.1, seed=args.seed) for t, d in train_all.items()}
    train_sets = {t: s[0] for t, s in splits.items()}
    val_sets = {t: s[1] for t, s in splits.items()}
    seen = [t for t in train_all if t not in HELD_OUT]
    teacher_scorer = SuiteScorer(args.teachers)
    max_length = teacher_scorer.max_length
    timings = {}

    # teachers: soft targets on the 8 items' training responses, and their test QWK
    t0 = time.perf_counter()
    teachers = compute_teacher_targets(teacher_scorer, {t: train_sets[t] for t in seen}, work / "teacher-targets")
    timings["teacher_targets_s"] = time.perf_counter() - t0
    teacher_eval = cached_json(
        work / "teachers-test.json", lambda: evaluate_suite(teacher_scorer, test_all, progress=False)
    )
    print("teachers", round(teacher_eval["mean_qwk"], 4), flush=True)

    # the student encoder: MiniLM's first 3 layers
    student_path = truncated_backbone("minilm", STUDENT_LAYERS, work / f"minilm-l{STUDENT_LAYERS}")
    bb = Backbone.load(student_path)

    # per-task students (3-layer full fine-tunes), all 10 items: the held-out items' 100% from-scratch baseline too
    t0 = time.perf_counter()
    opts = TrainOptions(method="full", backbone=str(student_path), max_length=max_length, config=PER_TASK_CONFIG)
    train_suite(train_sets, work / "per-task", opts, val_sets=val_sets, backbone=bb)
    timings["per_task_students_s"] = time.perf_counter() - t0
    per_task = cached_json(
        work / "per-task-test.json", lambda: evaluate_suite(SuiteScorer(work / "per-task"), test_all, progress=False)
    )
    print("per-task students", round(np.mean([per_task["tasks"][t]["qwk"] for t in seen]), 4), flush=True)

    # students on the 8 items
    variants = {
        "moe_kd": (MoEConfig(), StudentObjective()),
        "moe_no_kd": (MoEConfig(), StudentObjective(kd_weight=0.0)),
        "multitask_kd": (MoEConfig(n_layers=0), StudentObjective()),
    }
    students = {}
    for name, (cfg, objective) in variants.items():
        suite_dir = work / f"student-{name}"

        def run(cfg=cfg, objective=objective, suite_dir=suite_dir, name=name) -> dict:
            t = time.perf_counter()
            student, fit = train_student(
                bb.encoder,
                bb.tokenizer,
                bb.hidden,
                {k: train_sets[k] for k in seen},
                {k: val_sets[k] for k in seen},
                max_length=max_length,
                moe=cfg,
                objective=objective,
                config=STUDENT_CONFIG,
                teachers=teachers if objective.kd_weight > 0 else None,
                checkpoint_dir=work / f".ckpt-{name}",
            )
            seconds = time.perf_counter() - t
            save_student(student, suite_dir, bb.info.to_dict(), max_length)
            res = evaluate_suite(SuiteScorer(suite_dir), {k: test_all[k] for k in seen}, progress=False)
            return {
                "test": res,
                "fit": {"best_epoch": fit.best_epoch, "history": fit.history},
                "seconds": seconds,
                "config": cfg.to_dict(),
                "objective": objective.__dict__,
            }

        students[name] = cached_json(work / f"student-{name}.json", run)
        print(name, round(students[name]["test"]["mean_qwk"], 4), flush=True)

    # adaptation of the distilled MoE student to the held-out items vs per-task models from scratch
    adapt = {}
    for t in HELD_OUT:
        for frac in FRACTIONS:
            key = f"{t}@{frac:g}"
            sub = (
                train_sets[t]
                if frac == 1.0
                else train_val_split(train_sets[t], val_fraction=1 - frac, seed=args.seed)[0]
            )

            def run_adapt(t=t, sub=sub) -> dict:
                student, sbb = load_student(work / "student-moe_kd")
                r = adapt_to_task(student, sbb.tokenizer, sub, val_sets[t], max_length=max_length, progress=False)
                return {
                    "n_train": len(sub),
                    "test": _test_metrics(student.task_view(t), sbb, test_all[t], max_length),
                    **{k: v for k, v in r.to_dict().items() if k != "fit"},
                    "best_epoch": r.fit.best_epoch,
                }

            def run_scratch(t=t, sub=sub, frac=frac) -> dict:
                if frac == 1.0:
                    return {"n_train": len(sub), "test": per_task["tasks"][t], "from": "per-task students"}
                d = work / f"scratch-{t}-{frac:g}"
                train_suite({t: sub}, d, opts, val_sets={t: val_sets[t]}, backbone=bb)
                res = evaluate_suite(SuiteScorer(d), {t: test_all[t]}, progress=False)
                return {"n_train": len(sub), "test": res["tasks"][t]}

            a = cached_json(work / f"adapt-{key}.json", run_adapt)
            s = cached_json(work / f"scratch-{key}.json", run_scratch)
            adapt[key] = {
                "task": t,
                "fraction": frac,
                "adapted": a,
                "scratch": s,
                "ratio": a["test"]["qwk"] / s["test"]["qwk"] if s["test"]["qwk"] > 0 else float("nan"),
            }
            print(key, round(a["test"]["qwk"], 4), "vs scratch", round(s["test"]["qwk"], 4), flush=True)

    # the adapted tasks (100%) written into a copy of the student suite: served with the others
    served_dir = work / "student-moe_kd-plus-2"
    if not (served_dir / "manifest.json").is_file():
        student, sbb = load_student(work / "student-moe_kd")
        for t in HELD_OUT:
            adapt_to_task(student, sbb.tokenizer, train_sets[t], val_sets[t], max_length=max_length, progress=False)
        save_student(student, served_dir, sbb.info.to_dict(), max_length)
    served = evaluate_suite(SuiteScorer(served_dir), test_all, progress=False)
    from scoreplex.engine import Engine

    engine = Engine(served_dir)
    mixed = [(t, test_all[t].texts[i]) for i in range(20) for t in test_all]
    engine_rows = engine.score(mixed)
    scorer = SuiteScorer(served_dir)
    agree = np.mean(
        [
            engine_rows[j]["labels"]["score"] == int(scorer.predict(t, [text]).labels[0, 0])
            for j, (t, text) in enumerate(mixed[:60])
        ]
    )

    # storage
    def suite_bytes(path) -> int:
        return Suite.open(path, verify=False).model_bytes

    per_task_suite = Suite.open(work / "per-task", verify=False)
    students_bytes = sum(per_task_suite.task_bytes(t) for t in seen)
    teacher_bytes = sum(teacher_scorer.suite.task_bytes(t) for t in seen)
    student_bytes = suite_bytes(work / "student-moe_kd")
    storage = {
        "moe_student_bytes": student_bytes,
        "separate_students_bytes": students_bytes,
        "teachers_bytes": teacher_bytes,
        "students_vs_moe": students_bytes / student_bytes,
        "teachers_vs_moe": teacher_bytes / student_bytes,
    }

    def mean_seen(res) -> float:
        return float(np.mean([res["tasks"][t]["qwk"] for t in seen]))

    def qwks(res):
        return [res["tasks"][t]["qwk"] for t in seen]

    student_params = sum(p.numel() for p in load_student(work / "student-moe_kd")[0].parameters())
    report = {
        "moe_mean_qwk": students["moe_kd"]["test"]["mean_qwk"],
        "moe_no_kd_mean_qwk": students["moe_no_kd"]["test"]["mean_qwk"],
        "multitask_kd_mean_qwk": students["multitask_kd"]["test"]["mean_qwk"],
        "per_task_students_mean_qwk": mean_seen(per_task),
        "teachers_mean_qwk": mean_seen(teacher_eval),
        "adapt_new_params_fraction": max(v["adapted"]["new_fraction"] for v in adapt.values()),
        "adapt_100_vs_scratch": float(np.nanmean([adapt[f"{t}@1"]["ratio"] for t in HELD_OUT])),
        "adapt_10_vs_scratch": float(np.nanmean([adapt[f"{t}@0.1"]["ratio"] for t in HELD_OUT])),
        "storage_vs_students": storage["students_vs_moe"],
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/moe.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "held_out": list(HELD_OUT),
        "why_held_out": WHY_HELD_OUT,
        "seen": seen,
        "student_layers": STUDENT_LAYERS,
        "student_parameters": student_params,
        "train_config": STUDENT_CONFIG.to_dict(),
        "per_task_config": PER_TASK_CONFIG.to_dict(),
        "per_item": {
            t: {
                "teacher": teacher_eval["tasks"][t]["qwk"],
                "per_task_student": per_task["tasks"][t]["qwk"],
                **{n: s["test"]["tasks"][t]["qwk"] for n, s in students.items()},
            }
            for t in seen
        },
        "t_tests": {
            "moe_kd_vs_per_task": paired_t_test(qwks(students["moe_kd"]["test"]), qwks(per_task)),
            "moe_kd_vs_moe_no_kd": paired_t_test(qwks(students["moe_kd"]["test"]), qwks(students["moe_no_kd"]["test"])),
            "moe_kd_vs_multitask_kd": paired_t_test(
                qwks(students["moe_kd"]["test"]), qwks(students["multitask_kd"]["test"])
            ),
        },
        "students": students,
        "adaptation": adapt,
        "served_suite": {
            "path": str(served_dir),
            "mean_qwk": served["mean_qwk"],
            "tasks": {t: v["qwk"] for t, v in served["tasks"].items()},
            "engine_vs_scorer_label_agreement": float(agree),
        },
        "storage": storage,
        "timings": {**timings, **{f"{n}_train_s": s["seconds"] for n, s in students.items()}},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "moe.json", report)
    (out / "moe.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "moe.png")
    print(f"wrote {out / 'moe.json'}, moe.md, moe.png", flush=True)
    return report


def _p(t) -> str:
    return f"mean diff {t['mean_diff']:+.3f}, t = {t['t']:.2f}, p = {t['p']:.3f}"


def markdown(r: dict) -> str:
    st = r["storage"]
    cols = ["teacher", "per_task_student", "moe_kd", "moe_no_kd", "multitask_kd"]
    names = [
        "teacher (6-layer, per item)",
        "per-task student (3-layer)",
        "MoE student + KD",
        "MoE, no KD",
        "multi-task + KD, no MoE",
    ]
    lines = [
        f"# UniMoE-Guided on ASAP-SAS: one distilled MoE student for {len(r['seen'])} items, adapted to "
        f"{len(r['held_out'])} more",
        "",
        f"Reproduce: `{r['command']}` ({r['date']}, {r['machine']}). Teachers: per-item full fine-tunes of "
        f"all-MiniLM-L6-v2 (`make bench-asap`). Students: MiniLM's first {r['student_layers']} layers "
        f"({r['student_parameters'] / 1e6:.1f}M parameters with the MoE block and {len(r['seen'])} heads), {EPOCHS} "
        "epochs, selected "
        "on the validation split; test.tsv used once.",
        "",
        f"Held out: {', '.join(r['held_out'])}. {r['why_held_out']}",
        "",
        f"## Mean test QWK over the {len(r['seen'])} training items",
        "",
        "| model | mean QWK |",
        "|---|---:|",
        f"| teachers | {r['teachers_mean_qwk']:.3f} |",
        f"| per-task students | {r['per_task_students_mean_qwk']:.3f} |",
        f"| MoE student + distillation | **{r['moe_mean_qwk']:.3f}** |",
        f"| MoE student, no distillation | {r['moe_no_kd_mean_qwk']:.3f} |",
        f"| multi-task student + distillation, no MoE block | {r['multitask_kd_mean_qwk']:.3f} |",
        "",
        f"Paired t-tests over the {len(r['seen'])} items: "
        + "; ".join(f"{k.replace('_', ' ')}: {_p(v)}" for k, v in r["t_tests"].items()),
        "",
        "| item | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for t, v in r["per_item"].items():
        lines.append(f"| {t} | " + " | ".join(f"{v[c]:.3f}" for c in cols) + " |")
    lines += [
        "",
        "![per item](moe.png)",
        "",
        "## Adaptation to the held-out items (only a task embedding + head train)",
        "",
        "| item | share of train data | n | adapted student QWK | from-scratch 3-layer QWK | ratio | new parameters |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in r["adaptation"].values():
        a, s = v["adapted"], v["scratch"]
        lines.append(
            f"| {v['task']} | {v['fraction'] * 100:.0f}% | {a['n_train']} | {a['test']['qwk']:.3f} | "
            f"{s['test']['qwk']:.3f} | {v['ratio']:.3f} | {a['new_parameters']:,} ({a['new_fraction'] * 100:.4f}%) |"
        )
    lines += [
        "",
        f"Mean ratio adapted / scratch: 100% data **{r['adapt_100_vs_scratch']:.3f}**, 10% data "
        f"**{r['adapt_10_vs_scratch']:.3f}**. New parameters per task: at most "
        f"{r['adapt_new_params_fraction'] * 100:.4f}% of the student.",
        "",
        f"The student with the adapted items added is one {len(r['served_suite']['tasks'])}-task suite "
        f"(`{r['served_suite']['path']}`): mean test "
        f"QWK {r['served_suite']['mean_qwk']:.3f} through `SuiteScorer`; the inference engine scoring 200 mixed-task "
        f"rows in shared batches agrees with it on {r['served_suite']['engine_vs_scorer_label_agreement'] * 100:.1f}% "
        "of the first 60 labels.",
        "",
        f"## Storage ({len(r['seen'])} items)",
        "",
        f"- MoE student suite: {st['moe_student_bytes'] / 1e6:,.1f} MB",
        f"- {len(r['seen'])} separate {r['student_layers']}-layer students: "
        f"{st['separate_students_bytes'] / 1e6:,.1f} MB "
        f"(**{st['students_vs_moe']:.2f}×** the MoE student)",
        f"- {len(r['seen'])} teachers: {st['teachers_bytes'] / 1e6:,.1f} MB ({st['teachers_vs_moe']:.2f}×)",
        "",
        "Training time: " + ", ".join(f"{k} {v:,.0f} s" for k, v in r["timings"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    from scoreplex.reports.merging import plot_before_after

    labels = {
        "teacher": "teacher",
        "per_task_student": "per-task student",
        "moe_kd": "MoE + KD",
        "moe_no_kd": "MoE, no KD",
        "multitask_kd": "multi-task + KD",
    }
    series = {lab: {t: v[k] for t, v in r["per_item"].items()} for k, lab in labels.items()}
    plot_before_after(series, list(r["per_item"]), path)


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

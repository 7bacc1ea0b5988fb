"""INT8 and batch independence: does a response's label depend on the other rows of its batch?

    scoreplex demo --out build/demo
    python benchmarks/int8_batch.py --demo build/demo --out docs/results/int8

Dynamic quantisation (ONNX Runtime ``quantize_dynamic``, scoreplex's INT8 export before it became static; this
script writes it for comparison) computes one activation
scale per batch tensor, so a long answer in the batch changes every other row's quantisation. Static quantisation
(:func:`scoreplex.engine.quantize.quantize_int8_static`) fixes those scales from calibration data. This script trains
nothing: it takes the demo's LoRA suite and data (``scoreplex demo``), exports the fp32 graph with ``export_onnx``, the
dynamic INT8 graph with ``quantize_dynamic`` and the static INT8 graph (what ``export_onnx(..., quantize="int8")``
writes) calibrated on the demo's
TRAINING responses (never the test ones), and for each of

  torch           the PyTorch engine (the reference)
  onnx-fp32       OnnxEngine on the fp32 graph
  onnx-int8-dyn   OnnxEngine on the dynamic INT8 graph
  onnx-int8-static OnnxEngine on the static INT8 graph (an export folder: the fp32 one with encoder.onnx replaced
                  and the sidecar's sha256 / quantize / quantization updated)

scores every test response

  alone           one ``score`` call per response (a batch of one, no padding, no neighbours);
  engine batches  all test responses in one ``score`` call, tasks mixed (the engine's length-sorted micro-batches);
  random batches  random 32-row batches, tasks and lengths mixed, each ONE encoder pass padded to its longest row
                  (``max_tokens=None``): the worst case, a short answer next to a long one;

and counts the responses whose labels (any rubric dimension) differ between alone and each batched mode. Also: the
mean test QWK against the human labels (engine batches; multi-label tasks: mean QWK over their binary dimensions),
agreement of each backend's labels with PyTorch's, and the median throughput of ``score`` on all test responses
(tokenisation to labels, ``--repeats`` passes, the systems taking turns). Writes ``<out>.json`` and ``<out>.md``;
a figure not measured is null.

Time (2 cores): about 5-8 minutes (three exports, 4 x 600 single-row calls, 4 x 3 timed passes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoreplex.suite import package_versions, sha256_file, write_json_atomic

SYSTEMS = ("torch", "onnx-fp32", "onnx-int8-dyn", "onnx-int8-static")
LABELS = {
    "torch": "PyTorch engine",
    "onnx-fp32": "ONNX fp32",
    "onnx-int8-dyn": "ONNX INT8 dynamic (per-batch activation scales)",
    "onnx-int8-static": "ONNX INT8 static (calibrated, fixed scales)",
}
MODES = ("engine", "random")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("build/demo"), help="a `scoreplex demo --out` folder")
    ap.add_argument("--out", type=Path, default=Path("docs/results/int8"), help="writes <out>.json and <out>.md")
    ap.add_argument("--work", type=Path, default=None, help="exports go here (default: <demo>/int8-batch)")
    ap.add_argument("--calibration", default="percentile", help="calibration method of the static graph")
    ap.add_argument("--calib-rows", type=int, default=512, help="training responses to calibrate on (all: 0)")
    ap.add_argument("--batch-size", type=int, default=32, help="rows per random batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per system (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per op (default: per core)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_demo(demo: Path):
    """The demo's training and test data sets ({task id: TaskData}), read as ``scoreplex demo`` reads them."""
    from scoreplex.data.demo import demo_column_labels, demo_specs
    from scoreplex.data.load import read_dataset
    from scoreplex.data.readers import ColumnMap

    specs = {s.id: s for s in demo_specs()}
    labels = demo_column_labels(specs.values())
    columns = ColumnMap(labels=labels, second={d: f"{d}_rater2" for d in labels})
    data = demo / "data"
    return tuple(read_dataset(data / f"{split}.csv", columns=columns, specs=specs) for split in ("train", "test"))


def calibration_sample(train, rows: int, seed: int) -> tuple[list[str], list[str]]:
    """``rows`` training responses (all: 0), the same share of every task, as (task ids, texts)."""
    rng = np.random.default_rng(seed)
    total = sum(len(d) for d in train.values())
    share = 1.0 if rows <= 0 or rows >= total else rows / total
    tasks, texts = [], []
    for task_id, d in train.items():
        k = max(1, round(share * len(d)))
        for i in sorted(rng.choice(len(d), size=k, replace=False)):
            tasks.append(task_id)
            texts.append(d.texts[i])
    return tasks, texts


def export_static(suite: Path, fp32_dir: Path, out_dir: Path, train, args) -> dict[str, Any]:
    """The static INT8 export folder: the fp32 one with its graph quantised, calibrated on training responses."""
    from scoreplex.engine.onnx_export import MODEL_FILE, SIDECAR_FILE
    from scoreplex.engine.onnx_runtime import OnnxEngine
    from scoreplex.engine.quantize import calibration_feeds, quantize_int8_static

    engine = OnnxEngine(suite, fp32_dir, intra_op_threads=args.threads)
    tasks, texts = calibration_sample(train, args.calib_rows, args.seed)
    engine.preload(dict.fromkeys(tasks))
    lora = engine.tables.feeds if engine.tables is not None else None
    slots = [engine.store.get(t).slot for t in tasks] if lora is not None else None
    feeds = calibration_feeds(engine.tokenizer, texts, engine.max_length, lora, slots=slots)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fp32_dir, tmp)
    t0 = time.perf_counter()
    details = quantize_int8_static(fp32_dir / MODEL_FILE, tmp / MODEL_FILE, feeds, method=args.calibration)
    seconds = time.perf_counter() - t0
    sidecar = json.loads((tmp / SIDECAR_FILE).read_text(encoding="utf-8"))
    sidecar.update(sha256=sha256_file(tmp / MODEL_FILE), quantize="int8-static", quantization=details)
    write_json_atomic(tmp / SIDECAR_FILE, sidecar)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {**details, "seconds": round(seconds, 2)}


def make_engine(system: str, suite: Path, dirs: dict[str, Path], *, random_batches: int | None, threads: int | None):
    """The engine of ``system``; ``random_batches=n``: one encoder pass per ``n`` rows (no token budget)."""
    from scoreplex.engine import Engine
    from scoreplex.engine.onnx_runtime import OnnxEngine

    batching: dict[str, Any] = {} if random_batches is None else {"batch_size": random_batches, "max_tokens": None}
    if system == "torch":
        return Engine(suite, **batching)
    return OnnxEngine(suite, dirs[system], intra_op_threads=threads, **batching)


def label_rows(results: Sequence[dict[str, Any]]) -> list[tuple[int, ...]]:
    """Each scored row's labels over its rubric dimensions, in the task's dimension order."""
    return [tuple(r["labels"].values()) for r in results]


def score_alone(engine, pairs: Sequence[tuple[str, str]]) -> list[tuple[int, ...]]:
    """Labels of each pair scored on its own (a batch of one)."""
    return [label_rows(engine.score([p]))[0] for p in pairs]


def score_random(engine, pairs: Sequence[tuple[str, str]], batch: int, seed: int) -> list[tuple[int, ...]]:
    """Labels of the pairs scored in random ``batch``-row calls (the engine must take each call as one pass)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    out: list[tuple[int, ...] | None] = [None] * len(pairs)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        for i, labels in zip(rows, label_rows(engine.score([pairs[i] for i in rows])), strict=True):
            out[i] = labels
    return out  # type: ignore[return-value]


def mean_qwk(test, task_of: Sequence[str], labels: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    """Per-task QWK against the human labels, and their mean (each task once)."""
    from scoreplex.metrics import evaluate_task

    per_task = {}
    for task_id, d in test.items():
        pred = np.array([lab for t, lab in zip(task_of, labels, strict=True) if t == task_id], dtype=np.int64)
        per_task[task_id] = float(evaluate_task(d.spec, d.labels, pred)["qwk"])
    return {"tasks": per_task, "mean": float(np.mean(list(per_task.values())))}


def throughput(engines: dict[str, Any], pairs: Sequence[tuple[str, str]], repeats: int) -> dict[str, dict]:
    """Median rows/s of one ``score`` call on every pair, per system, after one warm-up call each. The systems take
    turns within each repeat, so other work on the machine slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.score(list(pairs[:64]))
    for _ in range(repeats):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.score(list(pairs))
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "rows_per_s": len(pairs) / float(np.median(t)),
            "best_rows_per_s": len(pairs) / min(t),  # the least disturbed pass (the cores are shared)
            "seconds": [round(x, 3) for x in t],
        }
        for name, t in times.items()
    }


def changed(a: Sequence[tuple[int, ...]], b: Sequence[tuple[int, ...]]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def measure_labels(system: str, engine, suite: Path, dirs: dict[str, Path], test, pairs, args) -> dict[str, Any]:
    """One system's labels alone / in engine batches / in random batches, and its QWK."""
    task_of = [t for t, _ in pairs]
    t0 = time.perf_counter()
    mixed = label_rows(engine.score(list(pairs)))
    alone = score_alone(engine, pairs)
    in_random = make_engine(system, suite, dirs, random_batches=args.batch_size, threads=args.threads)
    in_random.preload(test)
    random = score_random(in_random, pairs, args.batch_size, args.seed)
    result = {
        "system": system,
        "labels": {"alone": alone, "engine": mixed, "random": random},
        "changed_vs_alone": {"engine": changed(alone, mixed), "random": changed(alone, random)},
        "qwk": mean_qwk(test, task_of, mixed),
        "qwk_alone": mean_qwk(test, task_of, alone)["mean"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _log(
        f"  [{system}] changed vs alone: engine {result['changed_vs_alone']['engine']}, random "
        f"{result['changed_vs_alone']['random']} of {len(pairs)}; QWK {result['qwk']['mean']:.4f}"
    )
    return result


def export_dynamic(fp32_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The comparison the library no longer offers: ONNX Runtime's dynamic INT8 (per-channel int8 weights, activation
    scales computed per call, i.e. per batch), written as an export folder next to the fp32 one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from scoreplex.engine.onnx_export import MODEL_FILE, SIDECAR_FILE
    from scoreplex.engine.quantize import constant_weight_matmuls

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fp32_dir, tmp)
    nodes = constant_weight_matmuls(fp32_dir / MODEL_FILE)
    quantize_dynamic(
        str(fp32_dir / MODEL_FILE),
        str(tmp / MODEL_FILE),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=nodes,
        extra_options={"MatMulConstBOnly": True},
    )
    details = {"scheme": "dynamic", "weight_type": "QInt8", "per_channel": True, "quantized_nodes": len(nodes)}
    sidecar = json.loads((tmp / SIDECAR_FILE).read_text(encoding="utf-8"))
    sidecar.update(sha256=sha256_file(tmp / MODEL_FILE), quantize="int8-dynamic", quantization=details)
    write_json_atomic(tmp / SIDECAR_FILE, sidecar)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return details


def run(args: argparse.Namespace) -> dict[str, Any]:
    from scoreplex.engine.onnx_export import export_onnx

    suite = args.demo / "suite"
    work = args.work or args.demo / "int8-batch"
    train, test = load_demo(args.demo)
    pairs = [(task_id, text) for task_id, d in test.items() for text in d.texts]  # test order: task by task
    dirs = {s: work / s for s in SYSTEMS if s != "torch"}
    _log(f"exporting fp32 and dynamic INT8 graphs of {suite} into {work}")
    export_onnx(suite, dirs["onnx-fp32"])
    dynamic = export_dynamic(dirs["onnx-fp32"], dirs["onnx-int8-dyn"])
    _log(f"static INT8: calibrating ({args.calibration}) on training responses")
    static = export_static(suite, dirs["onnx-fp32"], dirs["onnx-int8-static"], train, args)
    engines = {}
    for system in SYSTEMS:
        engines[system] = make_engine(system, suite, dirs, random_batches=None, threads=args.threads)
        engines[system].preload(test)
    rows = []
    for system in SYSTEMS:
        _log(f"labels of {system}")
        rows.append(measure_labels(system, engines[system], suite, dirs, test, pairs, args))
    _log(f"throughput: {args.repeats} passes over the test set, systems in turn")
    load_before = os.getloadavg()
    speeds = throughput(engines, pairs, args.repeats)
    for r in rows:
        r["throughput"] = speeds[r["system"]]
        _log(f"  [{r['system']}] {r['throughput']['rows_per_s']:.1f} rows/s")
    ref = rows[0]["labels"]["engine"]
    for r in rows:
        r["agree_with_torch"] = 1.0 - changed(ref, r["labels"]["engine"]) / len(pairs)
    return {
        "benchmark": "int8-batch",
        "command": "python benchmarks/int8_batch.py " + shlex.join(sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # other work on the cores skews the speeds: the 1 / 5 / 15 min load before and after the timed passes
            "load_average_before_timing": [round(x, 2) for x in load_before],
            "load_average_after_timing": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        "versions": package_versions(("scoreplex", "torch", "transformers", "onnx", "onnxruntime")),
        "suite": str(suite),
        "test_rows": len(pairs),
        "random_batch_rows": args.batch_size,
        "quantization": {"onnx-int8-dyn": dynamic, "onnx-int8-static": static},
        "systems": [{k: v for k, v in r.items() if k != "labels"} for r in rows],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def markdown(result: dict[str, Any]) -> str:
    """The results as a markdown page."""
    n = result["test_rows"]
    torch_speed = next(r for r in result["systems"] if r["system"] == "torch")["throughput"]
    lines = [
        "# INT8 quantisation and batch independence (demo suite)",
        "",
        f"Reproduce: `{result['command']}` (after `scoreplex demo`). {result['created']}, "
        f"{result['machine']['platform']}; onnxruntime {result['versions'].get('onnxruntime')}.",
        "",
        f"Labels changed: of the {n} demo test responses, how many get another label (any rubric dimension) when "
        "scored in a batch than when scored alone. *Engine batches*: all responses in one `score` call (length-"
        f"sorted micro-batches, tasks mixed); *random batches*: random {result['random_batch_rows']}-row batches, each "
        "one encoder pass padded to its longest row. QWK: mean over the 4 tasks against the human labels (engine "
        "batches). Throughput: one `score` call on all test responses, median of the timed passes (the systems take "
        f"turns; load average before / after: {result['machine']['load_average_before_timing'][0]} / "
        f"{result['machine']['load_average_after_timing'][0]} on {result['machine']['cpus']} CPUs).",
        "",
        "| system | changed, engine batches | changed, random batches | mean QWK | labels = PyTorch | rows/s "
        "(median) | × PyTorch | rows/s (best) | × PyTorch (best) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["systems"]:
        speed, best = r["throughput"]["rows_per_s"], r["throughput"]["best_rows_per_s"]
        lines.append(
            f"| {LABELS[r['system']]} | {r['changed_vs_alone']['engine']} / {n} | {r['changed_vs_alone']['random']} / "
            f"{n} | {_fmt(r['qwk']['mean'], '.4f')} | {_fmt(r['agree_with_torch'], '.1%')} | {_fmt(speed, '.1f')} | "
            f"{_fmt(_ratio(speed, torch_speed['rows_per_s']), '.2f')} | {_fmt(best, '.1f')} | "
            f"{_fmt(_ratio(best, torch_speed['best_rows_per_s']), '.2f')} |"
        )
    static = result["quantization"]["onnx-int8-static"]
    lines += [
        "",
        f"Static graph: {static['quantized_nodes']} MatMul nodes, weights {static['weight_type']} per channel, "
        f"activations {static['activation_type']} with fixed scales ({static['format']}), calibrated by "
        f"{static['calibration_method']} on {static['calibration_rows']} training responses "
        f"({static['seconds']} s).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.demo / "suite" / "manifest.json").is_file():
        from scoreplex.errors import ConfigError

        raise ConfigError(f"{args.demo} holds no demo suite; run `scoreplex demo --out {args.demo}` first.")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    _log(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

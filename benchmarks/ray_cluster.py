"""Ray paths vs the local paths, one report: training, Ray Data scoring and Ray Serve (issue 14).

Runs the three part benchmarks, each in its own interpreter and its own local Ray cluster, one after the other (never
two heavy jobs at once on a small machine), then writes ``docs/results/ray.{json,md,png}``:

- ``benchmarks/ray_train.py``: the same small real job (ASAP-SAS items, MiniLM) trained sequentially and as Ray tasks
  with 1 and 2 workers; identical modules / predictions; wall time ratios.
- ``benchmarks/ray_data.py``: ASAP-SAS test.tsv scored by the local command and by ``score --ray`` with 1 and 2
  actors; byte-identical output; throughput ratios.
- ``benchmarks/ray_serve.py``: the service load test against the plain uvicorn server and the Ray Serve deployment on
  one stream; throughput ratio, errors; adapter-cache hits with and without routing by task.

A part whose JSON is already under ``--work`` is not run again (delete it to re-measure); ``--report-only`` only
rewrites the report. A figure a part did not measure is ``null``.

    python benchmarks/ray_cluster.py --suite runs/asap-sas/lora --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("train", "data", "serve")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="a trained ASAP-SAS suite (scoring and serving)")
    ap.add_argument("--out", default="docs/results", help="folder for ray.{json,md,png}")
    ap.add_argument("--work", default="runs/ray", help="folder for the parts' JSON (a part found there is kept)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: train, data, serve")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from the parts' JSON")
    return ap.parse_args(argv)


def part_command(part: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The command line that measures one part into ``out``."""
    script = str(HERE / f"ray_{part}.py")
    extra = {
        "train": ["--sequential-twice"],
        "data": ["--suite", args.suite, "--repeats", "3"],
        "serve": ["--suite", args.suite, "--replicas", "2", "--ray-cpus", "2"],
    }[part]
    return [sys.executable, script, *extra, "--out", str(out)]


def _get(data: dict | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarise(parts: dict[str, dict | None]) -> dict[str, Any]:
    """The report's top-level figures from the parts' JSON (``None`` for a part not measured).

    ``ray_data_vs_local`` is the end-to-end throughput ratio of the largest actor pool measured (1 CPU per actor);
    ``ray_train_2_vs_1`` is Ray training wall time with 1 worker over that with 2 (> 1: two workers were faster).
    """
    train, data, serve = parts.get("train"), parts.get("data"), parts.get("serve")
    pools = sorted(
        (int(name.split("_")[1]), mode) for name, mode in (_get(data, "modes") or {}).items() if name != "local"
    )
    best_pool = pools[-1] if pools else None
    runs = _get(train, "runs") or {}
    return {
        "ray_train_identical": _get(train, "ray_train_identical"),
        "ray_train_identical_modules": _get(train, "ray_train_identical_modules"),
        "ray_train_2_vs_1": _ratio(_get(runs, "ray_1_worker", "seconds"), _get(runs, "ray_2_workers", "seconds")),
        "ray_train_1_vs_sequential": _ratio(_get(runs, "sequential", "seconds"), _get(runs, "ray_1_worker", "seconds")),
        "ray_data_identical": _get(data, "ray_data_identical"),
        "ray_data_vs_local": round(best_pool[1]["end_to_end_vs_local"], 3) if best_pool else None,
        "ray_data_actors": best_pool[0] if best_pool else None,
        "ray_serve_vs_uvicorn": _get(serve, "ray_serve_vs_uvicorn"),
        "ray_serve_errors": _get(serve, "ray_serve_errors"),
        "routing_hit_rate_default": _get(serve, "routing", "default_router", "hit_rate"),
        "routing_hit_rate_by_task": _get(serve, "routing", "task_header", "hit_rate"),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    parts = report["parts"]
    train, data, serve = parts.get("train"), parts.get("data"), parts.get("serve")
    lines = [
        "# Ray paths vs the local paths (issue 14)",
        "",
        f"Reproduce: `{report['command']}` ({report['date']}; {report['machine']}).",
        "Each part ran alone in its own interpreter and local Ray cluster, one after the other. On one 2-core machine",
        "Ray cannot add cores, so these ratios measure Ray's overhead and the equality of results, not a speed-up.",
        "",
        "| figure | measured |",
        "|---|---|",
    ]
    s = report
    rows = [
        ("training: Ray results identical to sequential (predictions)", s["ray_train_identical"]),
        ("training: identical module files (SHA-256)", s["ray_train_identical_modules"]),
        ("training: wall time Ray 1 worker / Ray 2 workers", s["ray_train_2_vs_1"]),
        ("training: wall time sequential / Ray 1 worker", s["ray_train_1_vs_sequential"]),
        ("Ray Data scoring: output byte-identical to the local command", s["ray_data_identical"]),
        (f"Ray Data scoring ({s['ray_data_actors']} actors): end-to-end rows/s vs local", s["ray_data_vs_local"]),
        ("Ray Serve: peak throughput vs plain uvicorn", s["ray_serve_vs_uvicorn"]),
        ("Ray Serve: errors over the load test", s["ray_serve_errors"]),
        ("Ray Serve: adapter-cache hit rate, default router (skewed stream)", s["routing_hit_rate_default"]),
        ("Ray Serve: adapter-cache hit rate, routed by task", s["routing_hit_rate_by_task"]),
    ]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in rows]
    if train:
        job = train["job"]
        lines += [
            "",
            f"## Training ({len(job['items'])} ASAP-SAS items x {job['train_per_item']} responses, {job['method']}, "
            f"{job['epochs']} epoch(s), {job['backbone']})",
            "",
            f"`{train['command']}`; Ray worker start-up {train['ray_worker_startup_seconds']} s (timed apart).",
            "The modules of 2 one-thread workers differ in their last bits from the two-thread sequential ones",
            "(float sums in another order); their predictions are the same.",
            "",
            "| run | workers x threads | wall s | speed-up vs sequential | same modules | same predictions |",
            "|---|---|---|---|---|---|",
        ]
        for name, run in train["runs"].items():
            ref = "reference" if name.startswith("sequential") else None
            lines.append(
                f"| {name} | {run.get('workers', 1)} x {run['threads']} | {run['seconds']} | "
                f"{_fmt(run.get('speedup_vs_sequential'))} | {ref or _fmt(run.get('identical_modules'))} | "
                f"{ref or _fmt(run.get('identical_predictions'))} |"
            )
    if data:
        lines += [
            "",
            f"## Batch scoring ({_get(data, 'modes', 'local', 'rows')} ASAP-SAS test responses, suite "
            f"{data['method']}, chunks of {data['chunk_rows']} rows; medians of "
            f"{_get(data, 'modes', 'local', 'runs')} runs)",
            "",
            f"`{data['command']}`",
            "",
            "| mode | wall s | end-to-end rows/s | steady rows/s | actor start-up s | vs local (end to end) |",
            "|---|---|---|---|---|---|",
        ]
        for name, mode in data["modes"].items():
            lines.append(
                f"| {name} | {mode['wall_seconds']:.1f} | {mode['end_to_end_rows_per_second']:.1f} | "
                f"{mode['steady_rows_per_second']:.1f} | {_fmt(mode.get('startup_seconds'), 1)} | "
                f"{_fmt(mode.get('end_to_end_vs_local'))} |"
            )
        scaling = data["scaling"]
        reads = f"{scaling['read_rows_per_second']:,.0f}"
        lines += ["", f"Scaling model: {scaling['model']} (one driver reads {reads} rows/s)."]
    if serve:
        up, sp = serve["uvicorn_peak"], serve["ray_serve_peak"]
        lines += [
            "",
            "## Serving",
            "",
            f"`{serve['command']}`; {serve['serve']}.",
            "",
            "| server | peak responses/s | at in flight | p50 ms | p99 ms | errors | 429s |",
            "|---|---|---|---|---|---|---|",
            f"| uvicorn | {up['throughput_rps']} | {up.get('concurrency')} | {up.get('p50_ms')} | "
            f"{up.get('p99_ms')} | {serve['uvicorn_errors']} | {serve['rejected_429']['uvicorn']} |",
            f"| Ray Serve | {sp['throughput_rps']} | {sp.get('concurrency')} | {sp.get('p50_ms')} | "
            f"{sp.get('p99_ms')} | {serve['ray_serve_errors']} | {serve['rejected_429']['ray_serve']} |",
        ]
        route = serve.get("routing")
        if route:
            lines += [
                "",
                f"Routing by task (Ray Serve model multiplexing on the task id): {route.get('requests')} requests of "
                f"the skewed mix, at most {route.get('max_tasks_per_replica')} task modules per replica.",
                "",
                "| router | module loads | cache hit rate | responses/s | errors |",
                "|---|---|---|---|---|",
            ]
            for name in ("default_router", "task_header"):
                r = route.get(name) or {}
                lines.append(
                    f"| {name} | {_fmt(r.get('module_loads'))} | {_fmt(r.get('hit_rate'))} | "
                    f"{_fmt(r.get('throughput_rps'), 1)} | {_fmt(r.get('errors'))} |"
                )
    lines += ["", "![Ray vs local](ray.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report
    bars = [
        ("train: Ray 1 worker\nvs sequential", s["ray_train_1_vs_sequential"]),
        ("train: Ray 2 workers\nvs 1 worker", s["ray_train_2_vs_1"]),
        (f"score: Ray Data\n{s['ray_data_actors']} actors vs local", s["ray_data_vs_local"]),
        ("serve: Ray Serve\nvs uvicorn", s["ray_serve_vs_uvicorn"]),
    ]
    bars = [(name, value) for name, value in bars if value is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color="#4c72b0")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, max([1.0, *(b[1] for b in bars)]) * 1.15)
    for i, (_, value) in enumerate(bars):
        ax.text(i, value, f"{value:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("throughput ratio (> 1: Ray faster)")
    ax.set_title("Ray paths vs local paths on one 2-core machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    from scoreplex.errors import ConfigError

    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in wanted if p not in PARTS]:
        raise ConfigError(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}.")
    if not args.report_only:
        from _common import require_suite

        require_suite(args.suite)
    for part in wanted:
        target = work / f"{part}.json"
        if target.is_file() or args.report_only:
            continue
        command = part_command(part, args, target)
        print(f"[{part}] {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)
    parts = {p: json.loads((work / f"{p}.json").read_text()) if (work / f"{p}.json").is_file() else None for p in PARTS}
    import platform

    import torch

    summary = summarise(parts)
    report = {
        **summary,
        "command": "python benchmarks/ray_cluster.py " + shlex.join(argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "parts": parts,
    }
    from scoreplex.suite import write_json_atomic

    write_json_atomic(out / "ray.json", report)
    (out / "ray.md").write_text(markdown(report))
    plot(report, out / "ray.png")
    print(json.dumps(summary, indent=1))
    return report


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(lambda: main(sys.argv[1:]))

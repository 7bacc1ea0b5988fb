"""Batch scoring on Ray Data vs the local command, on the same file in one run: rows/s, start-up, identical output.

The ASAP-SAS test responses (all 10 items, shuffled together with a fixed seed; ``--limit`` keeps the first N) are
written as one CSV (``id``, ``task``, ``text``), then scored ``--repeats`` times each by

1. the local command, :func:`scoreplex.streaming.score_file` (torch's default threads: every core), and
2. :func:`scoreplex.cluster.scoring.score_file_ray` with 1 and 2 actors (``--actors``) of 1 CPU each
   (``--cpus-per-actor``) on a Ray cluster started once in this process with the machine's cores.

Per mode, medians over the repeats: wall seconds (reading, model loading or actor start-up, scoring, writing),
end-to-end rows/s, and steady-state rows/s (local: once the model is loaded; Ray: from the first actor having loaded
the suite to the last row scored, so actor start-up and suite loading are reported apart, as ``startup_seconds`` for
the first actor and ``actors_ready_seconds`` for the last). Every Ray output is compared with the
local one byte for byte (it is in input order, so sorting by id changes nothing). The scaling model: actors are
independent, so N actors of c CPUs score about N x the 1-actor rate until the cluster's cores are used up; the
driver reads and checks the file at ``read_rows_per_second`` (measured here), the ceiling of one driver.

Writes ``--out`` (default ``runs/ray/data.json``). Run it on a quiet machine:

    python benchmarks/ray_data.py --suite runs/asap-sas/lora --repeats 3
    python benchmarks/ray_data.py --suite runs/asap-sas/lora --limit 200 --repeats 1   # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import whole_numbers
from scoreplex.cluster import connect
from scoreplex.cluster.scoring import RayScoring, score_file_ray
from scoreplex.data.asap_sas import load_asap_sas
from scoreplex.data.readers import ColumnMap, RowCheck, iter_table, write_table
from scoreplex.streaming import score_file
from scoreplex.suite import Suite, write_json_atomic


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True, help="a trained suite of the ASAP-SAS items, e.g. runs/asap-sas/lora")
    ap.add_argument("--out", default="runs/ray/data.json", help="the JSON written")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N shuffled responses")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode (medians reported)")
    ap.add_argument("--actors", default="1,2", type=whole_numbers, help="comma-separated actor counts")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs (torch threads) of each actor")
    ap.add_argument("--chunk-rows", type=int, default=1024, help="rows per chunk (both paths)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    return ap.parse_args(argv)


def test_file(folder: Path, limit: int | None, seed: int) -> Path:
    """ASAP-SAS test.tsv as one shuffled CSV of ``id, task, text``."""
    rows = [
        {"id": rid, "task": tid, "text": text}
        for tid, data in load_asap_sas(split="test").items()
        for rid, text in zip(data.ids, data.texts, strict=True)
    ]
    rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))][:limit]
    return write_table(folder / "asap-test.csv", rows)


def read_rate(path: Path, suite: Suite, chunk_rows: int) -> float:
    """Rows/s at which one driver reads and checks the file (the Ray path's reading, without the object store)."""
    t0, n, check = time.perf_counter(), 0, None
    specs = {t: suite.spec(t) for t in suite.task_ids}
    for chunk in iter_table(path, chunk_rows=chunk_rows):
        check = check or RowCheck(chunk, ColumnMap(), specs)
        for record, row in zip(chunk, chunk.rows, strict=True):
            check(record, row)  # a bad row raises, as in the run
            n += 1
    return n / (time.perf_counter() - t0)


def summary(runs: list[dict]) -> dict:
    """Medians of the runs of one mode."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "rows_per_second")}
    out = {
        "rows": runs[0]["rows"],
        "runs": len(runs),
        "wall_seconds": med["seconds"],
        "end_to_end_rows_per_second": runs[0]["rows"] / med["seconds"],
        "steady_rows_per_second": med["rows_per_second"],
    }
    for key in ("startup_seconds", "actors_ready_seconds"):  # Ray only
        if key in runs[0]:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    actor_counts = args.actors
    suite = Suite.open(args.suite)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ray-data-bench-") as tmp:
        folder = Path(tmp)
        source = test_file(folder, args.limit, args.seed)
        common = {"chunk_rows": args.chunk_rows, "progress": False, "overwrite": True}
        local_runs = [score_file(suite, source, folder / "local.csv", **common) for _ in range(args.repeats)]
        local_bytes = (folder / "local.csv").read_bytes()
        connect("local", num_cpus=cores)
        modes, identical = {"local": summary(local_runs)}, True
        for n in actor_counts:
            ray_at = RayScoring(address="local", actors=n, cpus_per_actor=args.cpus_per_actor)
            out = folder / f"ray-{n}.csv"
            runs = []
            for _ in range(args.repeats):
                runs.append(score_file_ray(suite, source, out, ray=ray_at, **common))
                identical &= out.read_bytes() == local_bytes
            modes[f"ray_{n}_actors"] = summary(runs)
        reading = read_rate(source, suite, args.chunk_rows)
    local = modes["local"]
    for name, mode in modes.items():
        if name != "local":
            mode["end_to_end_vs_local"] = mode["end_to_end_rows_per_second"] / local["end_to_end_rows_per_second"]
            mode["steady_vs_local"] = mode["steady_rows_per_second"] / local["steady_rows_per_second"]
    one = modes.get("ray_1_actors")
    fits = [n for n in actor_counts if n * args.cpus_per_actor <= cores]  # pools this machine holds at once
    result = {
        "ray_data_identical": identical,
        "ray_data_vs_local": {name: mode.get("end_to_end_vs_local") for name, mode in modes.items() if name != "local"},
        "modes": modes,
        "scaling": {
            "model": "N actors of 1 CPU score about N x the 1-actor steady rate until the cluster's cores are used; "
            "one driver reads and checks the file at read_rows_per_second, the ceiling of the whole run",
            "read_rows_per_second": reading,
            "predicted_steady_rows_per_second": ({n: n * one["steady_rows_per_second"] for n in fits} if one else None),
        },
        "suite": str(Path(args.suite).resolve()),
        "method": suite.method,
        "chunk_rows": args.chunk_rows,
        "cpus_per_actor": args.cpus_per_actor,
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": cores},
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(Path(args.out), result)
    return result


if __name__ == "__main__":
    import json

    from scoreplex.errors import run_script

    run_script(lambda: print(json.dumps(main(sys.argv[1:]), indent=1)))

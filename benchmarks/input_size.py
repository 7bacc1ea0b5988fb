"""Does input size decide memory? Peak RSS of `scoreplex score` on a file with one huge answer vs a normal file.

Each run is its own process (``scoreplex score`` through ``os.wait4``, which reports the child's peak RSS), side by
side in one invocation: a normal 40-row file of ASAP-SAS test answers, and a 2-row file whose second answer is
``--huge-mb`` MB of real answer text repeated. Target (project issue): the huge file's peak RSS <= 1.2x the normal
file's. Writes ``input_size.{json,md}`` under ``--out``.

    python benchmarks/input_size.py --suite runs/asap-sas/lora --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(args: list[str]) -> tuple[float, float, int]:
    """Run ``args``; returns (peak RSS in MB, wall seconds, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(proc.stderr.read().decode(errors="replace"))
    return usage.ru_maxrss / 1024, wall, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="a suite trained on ASAP-SAS items (asap-1 used)")
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--huge-mb", type=float, default=50.0, help="size of the huge answer in MB")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each file (the median is reported)")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()

    from statistics import median

    from _common import require_suite
    from scoreplex.errors import ConfigError

    require_suite(args.suite)

    from scoreplex.data.asap_sas import load_asap_sas
    from scoreplex.data.readers import write_table

    test = load_asap_sas(args.data, split="test", items=[1])["asap-1"]
    exe = str(Path(sys.executable).with_name("scoreplex"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        normal = [{"id": test.ids[i], "task": "asap-1", "text": test.texts[i]} for i in range(40)]
        write_table(tmp / "normal.jsonl", normal)
        text = " ".join(test.texts)
        huge = (text + " ") * int(args.huge_mb * 1e6 / (len(text) + 1) + 1)
        write_table(tmp / "huge.jsonl", [normal[0], {"id": "huge", "task": "asap-1", "text": huge}])
        for name in ("normal", "huge"):
            runs = []
            for r in range(args.repeats):
                cmd = [exe, "score", args.suite, str(tmp / f"{name}.jsonl"), str(tmp / f"out-{name}-{r}.csv")]
                runs.append(peak_rss_mb([*cmd, "--no-progress"]))
                if name == "normal" and runs[-1][2] != 0:
                    raise ConfigError(
                        f"`scoreplex score {args.suite}` failed on normal answers (exit {runs[-1][2]}, its error "
                        "above); nothing was measured."
                    )
            ok = [rss for rss, _, code in runs if code == 0]
            results[name] = {
                "peak_rss_mb": round(median(ok), 1) if ok else None,
                "wall_s": round(median(w for _, w, _ in runs), 2),
                "exit_codes": [c for _, _, c in runs],
                "bytes": (tmp / f"{name}.jsonl").stat().st_size,
            }
    n, h = results["normal"]["peak_rss_mb"], results["huge"]["peak_rss_mb"]
    report = {
        "command": "python benchmarks/input_size.py " + " ".join(sys.argv[1:]),
        "suite": args.suite,
        "huge_answer_mb": args.huge_mb,
        "runs": results,
        "huge_vs_normal_rss": round(h / n, 3) if n and h else None,
        "target": "<= 1.2",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "input_size.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [
        "# Peak memory of `scoreplex score`: one huge answer vs a normal file",
        "",
        f"Reproduce: `{report['command']}` (each run a separate process; median of {args.repeats}).",
        "",
        "| file | bytes | peak RSS (MB) | wall (s) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        md.append(f"| {name} | {r['bytes']:,} | {r['peak_rss_mb']} | {r['wall_s']} |")
    md += ["", f"Huge / normal peak RSS: **{report['huge_vs_normal_rss']}** (target <= 1.2)."]
    (out / "input_size.md").write_text("\n".join(md) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

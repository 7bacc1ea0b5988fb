"""What does serving over HTTP cost? `scoreplex serve` under increasing load vs `Engine.score` in-process.

One run: the same stream of real ASAP-SAS test responses (one response per request) is scored

1. in-process by :class:`scoreplex.engine.Engine` (the whole stream in one call: the engine's throughput; and one
   response at a time: its single-row latency), then
2. by a `scoreplex serve` subprocess on 127.0.0.1, driven by an async httpx client at 1, 2, 4, ... requests in
   flight (closed loop: each client sends its next request when the previous one is answered), with a uniform
   task mix and a skewed one (Zipf-like: asap-1 most often). Each level is bounded by ``--level-s`` seconds and
   ``--level-requests`` requests. Per level: throughput, p50/p95/p99 latency, 429s and errors, peak server RSS.
3. at 4x the saturating concurrency (the smallest level within 5 % of the best uniform throughput): the same
   figures; a 429 is back-pressure, not an error, and its client waits Retry-After (at most 1 s) as a client should.

Client and server share the machine's cores, so the HTTP figures include the client's own CPU time.
Writes ``service.{json,md,png}`` under ``--out``.

    python benchmarks/service.py --suite runs/asap-sas/lora --out docs/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIXES = ("uniform", "skewed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """The process's resident set size (VmRSS) in MB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Peak VmRSS of ``pid`` while the ``with`` block runs (sampled every ``every_s``)."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid) or 0.0)
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_mb(self.pid) or 0.0)


def stream(data: dict, mix: str, n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` (id, task, text) test responses; tasks drawn uniformly or Zipf-like (weight 1/rank)."""
    rng = np.random.default_rng(seed)
    tasks = sorted(data, key=lambda t: int(t.split("-")[-1]))
    w = np.ones(len(tasks)) if mix == "uniform" else 1.0 / np.arange(1, len(tasks) + 1)
    picks = rng.choice(len(tasks), size=n, p=w / w.sum())
    out = []
    for k, i in enumerate(picks):
        ds = data[tasks[i]]
        j = int(rng.integers(len(ds.texts)))
        out.append((f"{ds.ids[j]}-{k}", tasks[i], ds.texts[j]))
    return out


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


async def drive(
    url: str, rows: list, concurrency: int, seconds: float, max_requests: int, task_header: str | None = None
) -> dict:
    """Closed-loop load: ``concurrency`` clients, each one response per request, until the time or count bound.
    ``task_header``: a header that names each request's task (Ray Serve's routing by task), else none."""
    import httpx

    lat_ms: list[float] = []
    counts = {"ok": 0, "429": 0, "http_errors": 0, "transport_errors": 0, "row_errors": 0}
    kinds: dict[str, int] = {}
    next_i = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < max_requests and time.monotonic() < deadline:
            rid, task, text = rows[next_i % len(rows)]
            next_i += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    "/v1/score",
                    json={"responses": [{"id": rid, "task": task, "text": text}]},
                    headers={task_header: task} if task_header else None,
                )
            except httpx.TransportError as exc:
                counts["transport_errors"] += 1
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                continue
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code == 200:
                counts["ok"] += 1
                lat_ms.append(dt)
                counts["row_errors"] += sum(x["error"] is not None for x in r.json()["results"])
            elif r.status_code == 429:
                counts["429"] += 1
                await asyncio.sleep(min(1.0, float(r.headers.get("retry-after", "1"))))
            else:
                counts["http_errors"] += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": next_i,
        **counts,
        "wall_s": round(wall, 2),
        "throughput_rps": round(counts["ok"] / wall, 2),
        "p50_ms": pct(lat_ms, 50),
        "p95_ms": pct(lat_ms, 95),
        "p99_ms": pct(lat_ms, 99),
        "transport_error_kinds": kinds,
    }


def in_process(suite: str, rows: list, singles: int) -> dict:
    """The engine's throughput on the whole stream in one call, and its latency for one response per call."""
    from scoreplex.engine import Engine

    engine = Engine(suite)
    pairs = [(task, text) for _, task, text in rows]
    engine.score(
        pairs[:64] + [(t, "warm-up") for t in engine.task_ids]
    )  # warm-up: modules loaded, first-call allocations done
    t0 = time.perf_counter()
    engine.score(pairs)
    wall = time.perf_counter() - t0
    single = []
    for pair in pairs[:singles]:
        t = time.perf_counter()
        engine.score([pair])
        single.append((time.perf_counter() - t) * 1000)
    return {
        "rows": len(pairs),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(pairs) / wall, 2),
        "single_p50_ms": pct(single, 50),
        "single_p99_ms": pct(single, 99),
        "single_calls": len(single),
    }


def start_server(suite: str, port: int, log_path: Path) -> subprocess.Popen:
    import httpx

    exe = str(Path(sys.executable).with_name("scoreplex"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, "serve", suite, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited:\n" + log_path.read_text())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 180 s:\n" + log_path.read_text())


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def add_load_options(ap: argparse.ArgumentParser, levels: str) -> None:
    """The suite, data and load-level options (shared with benchmarks/ray_serve.py)."""
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="a LoRA/head/moe suite of the ASAP-SAS items")
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--levels", default=levels, help="requests in flight, comma-separated")
    ap.add_argument("--level-s", type=float, default=12.0, help="seconds per load level at most")
    ap.add_argument("--level-requests", type=int, default=3000, help="requests per load level at most")


def asap_test_responses(args) -> dict:
    """The ASAP-SAS test responses by task, once the suite is there."""
    from scoreplex.data.asap_sas import load_asap_sas

    if not Path(args.suite, "manifest.json").is_file():
        raise SystemExit(f"no suite at {args.suite}: train it first (make bench-asap).")
    return load_asap_sas(args.data, split="test")


def level(url: str, pid: int, rows: list, c: int, args) -> dict:
    with RssSampler(pid) as rss:
        r = asyncio.run(drive(url, rows, c, args.level_s, args.level_requests))
    r["server_rss_mb"] = round(rss.peak, 1)
    print(json.dumps(r), flush=True)
    return r


def plot(levels: dict, overload: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mix, marker in zip(MIXES, ("o", "s"), strict=True):
        pts = levels[mix]
        x = [p["throughput_rps"] for p in pts]
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax.plot(x, [p[key] for p in pts], style, marker=marker, label=f"{mix} {key[:3]}")
        for p in pts:
            ax.annotate(
                str(p["concurrency"]),
                (p["throughput_rps"], p["p99_ms"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if overload and overload["p99_ms"] is not None:
        ax.plot(
            [overload["throughput_rps"]], [overload["p99_ms"]], "kx", label=f"{overload['concurrency']} in flight p99"
        )
    ax.set_xlabel("throughput (responses / s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("scoreplex serve: latency vs throughput (labels: requests in flight)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(ap, "1,2,4,8,16,32")
    ap.add_argument("--stream-rows", type=int, default=400, help="responses in each mix's stream")
    ap.add_argument("--singles", type=int, default=50, help="in-process single-response calls")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    t_start = time.perf_counter()

    data = asap_test_responses(args)
    rows = {mix: stream(data, mix, args.stream_rows, seed=i) for i, mix in enumerate(MIXES)}

    print("in-process engine...", flush=True)
    engine = {mix: in_process(args.suite, rows[mix], args.singles if mix == "uniform" else 0) for mix in MIXES}
    for mix in MIXES:
        if not engine[mix]["single_calls"]:
            del engine[mix]["single_p50_ms"], engine[mix]["single_p99_ms"], engine[mix]["single_calls"]
    print(json.dumps(engine), flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    concurrencies = [int(c) for c in args.levels.split(",")]
    levels: dict[str, list] = {mix: [] for mix in MIXES}
    overload = None
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        proc = start_server(args.suite, port, log_path)
        try:
            idle_rss = rss_mb(proc.pid)
            # warm-up, not reported: every task's module loaded, first-call allocations done
            warm = [(f"warm-{t}", t, ds.texts[0]) for t, ds in data.items()]
            asyncio.run(drive(url, warm * 2, 2, 120.0, 2 * len(warm)))
            for mix in MIXES:
                for c in concurrencies:
                    levels[mix].append(level(url, proc.pid, rows[mix], c, args))
            best = max(p["throughput_rps"] for p in levels["uniform"])
            sat = next(p for p in levels["uniform"] if p["throughput_rps"] >= 0.95 * best)
            overload = level(url, proc.pid, rows["uniform"], 4 * sat["concurrency"], args)
        finally:
            stop_server(proc)
        server_log = log_path.read_text(errors="replace")
    tracebacks = server_log.count("Traceback")

    uni = levels["uniform"]
    half = min(uni, key=lambda p: abs(p["concurrency"] - sat["concurrency"] / 2))
    all_levels = [*levels["uniform"], *levels["skewed"], overload]
    load_errors = sum(p["http_errors"] + p["transport_errors"] for p in all_levels)
    peak_http = {mix: max(p["throughput_rps"] for p in levels[mix]) for mix in MIXES}
    report = {
        "command": "python benchmarks/service.py " + " ".join(sys.argv[1:]),
        "suite": args.suite,
        "cores": os.cpu_count(),
        "server": "scoreplex serve defaults (max_batch_rows 64, max_wait_ms 5, queue_size 64); one response a request",
        "http_vs_inprocess": round(peak_http["uniform"] / engine["uniform"]["throughput_rps"], 3),
        "http_vs_inprocess_skewed": round(peak_http["skewed"] / engine["skewed"]["throughput_rps"], 3),
        "p99_ms_half_load": half["p99_ms"],
        "half_load_concurrency": half["concurrency"],
        "saturation_concurrency": sat["concurrency"],
        "p50_ms_single": uni[0]["p50_ms"] if uni[0]["concurrency"] == 1 else None,
        "engine_single_ms": engine["uniform"]["single_p50_ms"],
        "fuzz_cases": None,
        "fuzz_5xx": None,
        "load_errors": load_errors,
        "row_errors": sum(p["row_errors"] for p in all_levels),
        "rejected_429": sum(p["429"] for p in all_levels),
        "server_tracebacks": tracebacks,
        "rss_idle_mb": round(idle_rss, 1) if idle_rss else None,
        "rss_saturation_mb": sat["server_rss_mb"],
        "rss_overload_mb": overload["server_rss_mb"],
        "rss_overload_ratio": round(overload["server_rss_mb"] / sat["server_rss_mb"], 3),
        "engine_in_process": engine,
        "levels": levels,
        "overload": overload,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "service.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(levels, overload, out / "service.png")
    write_md(report, out / "service.md")
    print(json.dumps({k: v for k, v in report.items() if k not in ("levels", "engine_in_process")}, indent=1))


def write_md(r: dict, path: Path) -> None:
    e = r["engine_in_process"]
    md = [
        "# `scoreplex serve` under load vs the engine in-process",
        "",
        f"Reproduce: `{r['command']}` ({r['cores']} cores; client and server share them; {r['wall_s']} s).",
        f"Suite `{r['suite']}`; real ASAP-SAS test responses, one per request; {r['server']}.",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| peak HTTP throughput / in-process `Engine.score` (uniform mix) | {r['http_vs_inprocess']}x |",
        f"| same, skewed mix | {r['http_vs_inprocess_skewed']}x |",
        f"| in-process engine throughput (uniform / skewed, responses/s) | {e['uniform']['throughput_rps']} / "
        f"{e['skewed']['throughput_rps']} |",
        f"| p50 latency, one response, 1 in flight (HTTP) | {r['p50_ms_single']} ms |",
        f"| engine's own single-response latency (p50, in-process) | {r['engine_single_ms']} ms |",
        f"| saturating concurrency (within 5 % of the best throughput) | {r['saturation_concurrency']} |",
        f"| p99 latency at half load ({r['half_load_concurrency']} in flight) | {r['p99_ms_half_load']} ms |",
        f"| server RSS: idle / saturation / 4x saturation ({r['overload']['concurrency']} in flight) | "
        f"{r['rss_idle_mb']} / {r['rss_saturation_mb']} / {r['rss_overload_mb']} MB |",
        f"| RSS at 4x saturation / at saturation | {r['rss_overload_ratio']} |",
        f"| load errors (5xx, other non-200/429, transport) / 429s / row errors | {r['load_errors']} / "
        f"{r['rejected_429']} / {r['row_errors']} |",
        f"| tracebacks in the server log | {r['server_tracebacks']} |",
        "| fuzz cases / 5xx | not measured here: `tests/test_service_fuzz.py` counts them (>= 1,000, no 5xx) |",
        "",
        "Per level (closed loop: each client sends its next request when answered):",
        "",
        "| mix | in flight | requests | ok | 429 | errors | responses/s | p50 ms | p95 ms | p99 ms | server RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mix, pts in [*r["levels"].items(), ("uniform, 4x saturation", [r["overload"]])]:
        for p in pts:
            err = p["http_errors"] + p["transport_errors"]
            md.append(
                f"| {mix} | {p['concurrency']} | {p['requests']} | {p['ok']} | {p['429']} | {err} | "
                f"{p['throughput_rps']} | {p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['server_rss_mb']} |"
            )
    md += [
        "",
        'Notes: "saturation" is the smallest measured level within 5 % of the best uniform throughput; on 2 cores the',
        "throughput is nearly flat from 4 in flight on, so latency there is mostly queueing.",
        "The machine is shared (other processes may have run during the levels): single levels are noisy by about",
        "+-15 %.",
        "",
        "![latency vs throughput](service.png)",
    ]
    path.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()

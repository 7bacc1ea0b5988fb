"""What does serving over HTTP cost? `scoreplex serve` under increasing load vs `Engine.score` in-process.

One run: the same stream of real ASAP-SAS test responses (one response per request) is scored

1. in-process by :class:`scoreplex.engine.Engine` (the whole stream in one call: the engine's throughput; and one
   response at a time: its single-row latency), then
2. by a `scoreplex serve` subprocess on 127.0.0.1 with its default settings, driven by a lean asyncio HTTP/1.1
   client (:class:`RawClient`; ``--client httpx`` for httpx) at 1, 2, 4, ... requests in flight (closed loop: each
   client sends its next request when the previous one is answered), with a uniform task mix and a skewed one
   (Zipf-like: asap-1 most often). Each level is bounded by ``--level-s`` seconds and
   ``--level-requests`` requests. Per level: throughput, p50/p95/p99 latency, 429s and errors, peak server RSS.
3. at the saturating concurrency (the smallest level within 5 % of the best uniform throughput) once more, then at
   4x it (server RSS compared between these two, RSS being a high-water mark): the same
   figures; a 429 is back-pressure, not an error, and its client waits Retry-After (at most 1 s) as a client should.

Client and server share the machine's cores, so the HTTP figures include the client's own CPU time (reported per
request); one extra level at the saturating concurrency is driven with httpx, for comparison.
Writes ``service.{json,md,png}`` under ``--out``.

    python benchmarks/service.py --suite runs/asap-sas/lora --out docs/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from _common import require_suite, whole_numbers

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


class RawClient:
    """A lean HTTP/1.1 keep-alive client for the load generator: request bytes built once per row, responses read
    by Content-Length and parsed with ``json.loads``. On 2 cores the load generator shares the CPU with the server;
    httpx spent about 2-5 ms of CPU per request here, this client well under 1 ms, so the figures measure the
    server rather than the client. Only what `scoreplex serve` answers is supported (no chunked bodies)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        """(status, lower-cased headers, body); reconnects once if the kept-alive connection was closed."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        ).encode()
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(head + body)
                status_line = await self.reader.readuntil(b"\r\n")
                hdrs: dict[str, str] = {}
                while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    k, _, v = line.decode("latin-1").partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                data = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
                if hdrs.get("connection", "").lower() == "close":
                    await self.close()
                return int(status_line.split()[1]), hdrs, data
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def drive(
    url: str,
    rows: list,
    concurrency: int,
    seconds: float,
    max_requests: int,
    task_header: str | None = None,
    client: str = "raw",
) -> dict:
    """Closed-loop load: ``concurrency`` clients, each one response per request, until the time or count bound.
    ``task_header``: a header that names each request's task (Ray Serve's routing by task), else none.
    ``client``: ``raw`` (:class:`RawClient`, the default) or ``httpx``. The client's own CPU time per request is
    reported (``client_cpu_ms_per_request``): it is taken from the cores the server could have used."""
    import httpx

    lat_ms: list[float] = []
    counts = {"ok": 0, "429": 0, "http_errors": 0, "transport_errors": 0, "row_errors": 0}
    kinds: dict[str, int] = {}
    next_i = 0
    deadline = time.monotonic() + seconds
    parts = urlsplit(url)
    bodies = [json.dumps({"responses": [{"id": rid, "task": task, "text": text}]}).encode() for rid, task, text in rows]

    async def post(session, i: int) -> tuple[int, dict, bytes]:
        task = rows[i][1]
        headers = {task_header: task} if task_header else None
        if client == "raw":
            return await session.post("/v1/score", bodies[i], headers)
        r = await session.post(
            "/v1/score", content=bodies[i], headers={"content-type": "application/json", **(headers or {})}
        )
        return r.status_code, dict(r.headers), r.content

    async def client_loop(session) -> None:
        nonlocal next_i
        while next_i < max_requests and time.monotonic() < deadline:
            i = next_i % len(rows)
            next_i += 1
            t0 = time.perf_counter()
            try:
                status, headers, body = await post(session, i)
            except (httpx.TransportError, OSError, asyncio.IncompleteReadError) as exc:
                counts["transport_errors"] += 1
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                continue
            dt = (time.perf_counter() - t0) * 1000
            if status == 200:
                counts["ok"] += 1
                lat_ms.append(dt)
                counts["row_errors"] += sum(x["error"] is not None for x in json.loads(body)["results"])
            elif status == 429:
                counts["429"] += 1
                await asyncio.sleep(min(1.0, float(headers.get("retry-after", "1"))))
            else:
                counts["http_errors"] += 1

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if client == "raw":
        sessions = [RawClient(parts.hostname, parts.port) for _ in range(concurrency)]
        try:
            await asyncio.gather(*(client_loop(s) for s in sessions))
        finally:
            for s in sessions:
                await s.close()
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as session:
            await asyncio.gather(*(client_loop(session) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "client": client,
        "requests": next_i,
        **counts,
        "wall_s": round(wall, 2),
        "throughput_rps": round(counts["ok"] / wall, 2),
        "p50_ms": pct(lat_ms, 50),
        "p95_ms": pct(lat_ms, 95),
        "p99_ms": pct(lat_ms, 99),
        "client_cpu_ms_per_request": round((time.process_time() - cpu0) * 1000 / max(next_i, 1), 3),
        "transport_error_kinds": kinds,
    }


class InProcess:
    """The engine in this process, on the same streams: throughput on a whole stream in one call, and the latency
    of one response per call."""

    def __init__(self, suite: str, streams: dict[str, list]) -> None:
        from scoreplex.engine import Engine

        self.engine = Engine(suite)
        self.pairs = {mix: [(task, text) for _, task, text in rows] for mix, rows in streams.items()}
        first = next(iter(self.pairs.values()))
        self.engine.score(first[:64] + [(t, "warm-up") for t in self.engine.task_ids])  # modules loaded

    def throughput(self, mix: str) -> float:
        """Responses per second, the whole stream in one call."""
        t0 = time.perf_counter()
        self.engine.score(self.pairs[mix])
        return len(self.pairs[mix]) / (time.perf_counter() - t0)

    def single_ms(self, mix: str, calls: int) -> list[float]:
        """Milliseconds per call of one response, for the stream's first ``calls`` responses."""
        out = []
        for pair in self.pairs[mix][:calls]:
            t = time.perf_counter()
            self.engine.score([pair])
            out.append((time.perf_counter() - t) * 1000)
        return out

    def sweep(self, singles: int, repeats: int = 3) -> dict:
        """Per stream the median throughput of ``repeats`` whole-stream calls (interleaved across the streams), and
        for the uniform stream the single-response latency."""
        rps: dict[str, list[float]] = {mix: [] for mix in self.pairs}
        for _ in range(repeats):
            for mix in self.pairs:
                rps[mix].append(self.throughput(mix))
        out = {
            mix: {
                "rows": len(self.pairs[mix]),
                "calls": repeats,
                "throughput_rps": round(float(np.median(v)), 2),
                "throughput_rps_each": [round(x, 2) for x in v],
            }
            for mix, v in rps.items()
        }
        single = self.single_ms("uniform", singles)
        out["uniform"].update(single_p50_ms=pct(single, 50), single_p99_ms=pct(single, 99), single_calls=len(single))
        return out


def paired_rounds(inproc: InProcess, url: str, pid: int, rows: list, concurrency: int, args) -> list[dict]:
    """``args.pairs`` rounds, each measuring the engine in-process and the server back to back on the uniform
    stream: throughput (whole stream in one call vs HTTP at ``concurrency`` in flight) and single-response latency
    (``args.singles`` engine calls vs as many HTTP requests at 1 in flight). On a shared machine whose speed drifts,
    the ratio within a round is steadier than the ratio of two figures taken minutes apart."""
    out = []
    for k in range(args.pairs):
        engine_rps = inproc.throughput("uniform")
        http = level(url, pid, rows, concurrency, args)
        engine_single = pct(inproc.single_ms("uniform", args.singles), 50)
        one = asyncio.run(drive(url, rows, 1, args.level_s, args.singles, client=args.client))
        out.append(
            {
                "round": k + 1,
                "engine_rps": round(engine_rps, 2),
                "http_rps": http["throughput_rps"],
                "throughput_ratio": round(http["throughput_rps"] / engine_rps, 3),
                "engine_single_p50_ms": engine_single,
                "http_single_p50_ms": one["p50_ms"],
                "latency_ratio": round(one["p50_ms"] / engine_single, 3),
                "http_errors": http["http_errors"] + one["http_errors"],
                "transport_errors": http["transport_errors"] + one["transport_errors"],
                "row_errors": http["row_errors"] + one["row_errors"],
                "429": http["429"] + one["429"],
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def start_server(suite: str, port: int, log_path: Path, extra: Sequence[str] = ()) -> subprocess.Popen:
    import httpx

    exe = str(Path(sys.executable).with_name("scoreplex"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, "serve", suite, "--host", "127.0.0.1", "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
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


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then the exit status (None: it had to be killed after 60 s)."""
    proc.terminate()
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def fuzz_live(suite: str, task: str, tmp: Path) -> dict:
    """The service fuzzer of ``tests/test_service_fuzz.py`` (hypothesis, derandomized: >= 1,000 malformed requests)
    against a real `scoreplex serve` process on the real suite, served with a scorer key only so that no fuzzed
    request can change the suite. Afterwards: is it alive and ready, does it still score a valid request, and does
    SIGTERM end it with status 0?"""
    import httpx

    sys.path.insert(0, str(ROOT / "tests"))
    from test_service_fuzz import AUTH, SCORER_KEY, fuzz_requests

    keys = tmp / "fuzz-keys.txt"
    keys.write_text(f"scorer:{SCORER_KEY}\n")
    port = free_port()
    log_path = tmp / "fuzz-server.log"
    proc = start_server(suite, port, log_path, ["--keys-file", str(keys)])
    t0 = time.perf_counter()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0) as client:
            sent, bad, unsendable = fuzz_requests(client)
            alive = client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
            ok = client.post("/v1/score", json={"responses": [{"task": task, "text": "a valid answer"}]}, headers=AUTH)
            scores_after = ok.status_code == 200 and ok.json()["results"][0]["error"] is None
    finally:
        exit_code = stop_server(proc)
    statuses = sorted({c for _, _, c in sent})
    return {
        "fuzz_cases": len(sent),
        "fuzz_5xx": len(bad),
        "not_sendable_by_httpx": unsendable,
        "by_status": {str(code): sum(c == code for _, _, c in sent) for code in statuses},
        "first_5xx": [list(b) for b in bad[:3]],
        "alive_after": alive,
        "scores_after": scores_after,
        "tracebacks": log_path.read_text(errors="replace").count("Traceback"),
        "exit_code_after_sigterm": exit_code,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def add_load_options(ap: argparse.ArgumentParser, levels: str, client: str = "raw") -> None:
    """The suite, data, load-level and client options (shared with benchmarks/ray_serve.py)."""
    ap.add_argument("--suite", default="runs/asap-sas/lora", help="a LoRA/head/moe suite of the ASAP-SAS items")
    ap.add_argument("--data", default=None, help="ASAP-SAS folder (default: ../shared/data/asap-sas)")
    ap.add_argument("--levels", default=levels, type=whole_numbers, help="requests in flight, comma-separated")
    ap.add_argument("--level-s", type=float, default=12.0, help="seconds per load level at most")
    ap.add_argument("--level-requests", type=int, default=3000, help="requests per load level at most")
    ap.add_argument("--client", choices=("raw", "httpx"), default=client, help="the load generator's HTTP client")


def build_quick_suite(folder: Path, data_root: str | None, rows_per_item: int) -> None:
    """A LoRA suite of the 10 ASAP-SAS items trained on each item's first ``rows_per_item`` training responses for
    one epoch (about a minute on 2 cores), for when the real one (``make bench-asap``, about an hour) is not at hand.
    Serving cost depends on the suite's shape (method, LoRA rank, max_length, the tasks), which this suite shares
    with the real one, not on how well it scores; its QWK means nothing. Kept under ``folder`` (resumable)."""
    import csv

    from scoreplex.data.asap_sas import default_root

    if (folder / "suite" / "manifest.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    taken: dict[str, int] = {}
    tsv = folder / "train-subset.tsv"
    root = Path(data_root) if data_root else default_root()
    with open(root / "train.tsv", newline="", encoding="utf-8") as f, open(tsv, "w", newline="") as out:
        w = csv.writer(out, delimiter="\t")
        w.writerow(["id", "task", "text", "score"])
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if taken.get(row["EssaySet"], 0) < rows_per_item:
                taken[row["EssaySet"]] = taken.get(row["EssaySet"], 0) + 1
                w.writerow([f"asap-{row['Id']}", f"asap-{row['EssaySet']}", row["EssayText"], row["Score1"]])
    exe = str(Path(sys.executable).with_name("scoreplex"))
    cmd = [exe, "train", str(tsv), "-o", str(folder / "suite"), "--method", "lora", "--epochs", "1"]
    subprocess.run([*cmd, "--head-warmup-epochs", "0", "--max-length", "160"], check=True)


def asap_test_responses(args) -> dict:
    """The ASAP-SAS test responses by task, once the suite is there."""
    from scoreplex.data.asap_sas import load_asap_sas

    require_suite(args.suite)
    return load_asap_sas(args.data, split="test")


def level(url: str, pid: int, rows: list, c: int, args, client: str | None = None) -> dict:
    with RssSampler(pid) as rss:
        r = asyncio.run(drive(url, rows, c, args.level_s, args.level_requests, client=client or args.client))
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
    add_load_options(ap, "1,2,4,8,16,32,64,128,256")
    ap.add_argument("--stream-rows", type=int, default=400, help="responses in each mix's stream")
    ap.add_argument("--singles", type=int, default=50, help="single-response calls, in-process and over HTTP")
    ap.add_argument("--pairs", type=int, default=5, help="paired rounds (engine, then server) at saturation")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument(
        "--suite-note",
        default="",
        help="how the suite was trained, for the report (serving cost depends on the suite's shape: method, rank, "
        "max_length, tasks; not on how well it scores)",
    )
    ap.add_argument(
        "--quick-suite",
        default=None,
        metavar="FOLDER",
        help="train (once, into FOLDER) and serve a LoRA suite of the 10 items on 120 responses each for one epoch, "
        "instead of --suite: same serving cost, meaningless scores",
    )
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.quick_suite:
        build_quick_suite(Path(args.quick_suite), args.data, 120)
        args.suite = str(Path(args.quick_suite) / "suite")
        args.suite_note = args.suite_note or (
            "`--quick-suite`: LoRA r 8 on query/value, max_length 160, each item's first 120 training responses, "
            "one epoch; the serving cost of the real suite's shape, not its scores"
        )

    data = asap_test_responses(args)
    rows = {mix: stream(data, mix, args.stream_rows, seed=i) for i, mix in enumerate(MIXES)}

    print("in-process engine...", flush=True)
    inproc = InProcess(args.suite, rows)
    engine = inproc.sweep(args.singles)
    print(json.dumps(engine), flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    concurrencies = args.levels
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
            # RSS is a high-water mark (the allocator keeps what it took), so the overload level is compared with a
            # saturation level run just before it, not with the first one, which ran before the larger levels
            sat_again = level(url, proc.pid, rows["uniform"], sat["concurrency"], args)
            overload = level(url, proc.pid, rows["uniform"], 4 * sat["concurrency"], args)
            other = "httpx" if args.client == "raw" else "raw"
            other_client = level(url, proc.pid, rows["uniform"], sat["concurrency"], args, client=other)
            paired = paired_rounds(inproc, url, proc.pid, rows["uniform"], sat["concurrency"], args)
        finally:
            stop_server(proc)
        server_log = log_path.read_text(errors="replace")
        print("fuzzing a real server...", flush=True)
        fuzz = fuzz_live(args.suite, sorted(data)[0], Path(tmp))
        print(json.dumps(fuzz), flush=True)
    tracebacks = server_log.count("Traceback")

    from scoreplex.service.settings import ServiceSettings

    defaults = ServiceSettings.model_construct()
    uni = levels["uniform"]
    half = min(uni, key=lambda p: abs(p["concurrency"] - sat["concurrency"] / 2))
    all_levels = [*levels["uniform"], *levels["skewed"], sat_again, overload, other_client, *paired]
    load_errors = sum(p["http_errors"] + p["transport_errors"] for p in all_levels)
    peak_http = {mix: max(p["throughput_rps"] for p in levels[mix]) for mix in MIXES}
    report = {
        "command": "python benchmarks/service.py " + " ".join(sys.argv[1:]),
        "suite": args.suite,
        "cores": os.cpu_count(),
        "suite_note": args.suite_note or None,
        "server": f"scoreplex serve defaults (max_batch_rows {defaults.max_batch_rows}, max_wait_ms "
        f"{defaults.max_wait_ms:g}, queue_size {defaults.queue_size}, keep_alive_s {defaults.keep_alive_s:g}, "
        f"access_log {'on' if defaults.access_log else 'off'}); one response a request",
        "client": args.client,
        "http_vs_inprocess": round(float(np.median([p["throughput_ratio"] for p in paired])), 3),
        "http_vs_inprocess_rounds": [p["throughput_ratio"] for p in paired],
        "http_vs_inprocess_sweep": round(peak_http["uniform"] / engine["uniform"]["throughput_rps"], 3),
        "http_vs_inprocess_skewed_sweep": round(peak_http["skewed"] / engine["skewed"]["throughput_rps"], 3),
        "p99_ms_half_load": half["p99_ms"],
        "half_load_concurrency": half["concurrency"],
        "saturation_concurrency": sat["concurrency"],
        "p50_ms_single": float(np.median([p["http_single_p50_ms"] for p in paired])),
        "engine_single_ms": float(np.median([p["engine_single_p50_ms"] for p in paired])),
        "single_latency_ratio": round(float(np.median([p["latency_ratio"] for p in paired])), 3),
        "single_latency_ratio_rounds": [p["latency_ratio"] for p in paired],
        "fuzz_cases": fuzz["fuzz_cases"],
        "fuzz_5xx": fuzz["fuzz_5xx"],
        "fuzz": fuzz,
        "load_errors": load_errors,
        "row_errors": sum(p["row_errors"] for p in all_levels),
        "rejected_429": sum(p["429"] for p in all_levels),
        "server_tracebacks": tracebacks,
        "rss_idle_mb": round(idle_rss, 1) if idle_rss else None,
        "rss_saturation_mb": sat_again["server_rss_mb"],
        "rss_saturation_first_mb": sat["server_rss_mb"],
        "saturation_again": sat_again,
        "rss_overload_mb": overload["server_rss_mb"],
        "rss_overload_ratio": round(overload["server_rss_mb"] / sat_again["server_rss_mb"], 3),
        "rss_overload_ratio_vs_first_saturation_level": round(overload["server_rss_mb"] / sat["server_rss_mb"], 3),
        "engine_in_process": engine,
        "levels": levels,
        "overload": overload,
        "other_client_at_saturation": other_client,
        "paired_rounds": paired,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "service.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(levels, overload, out / "service.png")
    write_md(report, out / "service.md")
    print(json.dumps({k: v for k, v in report.items() if k not in ("levels", "engine_in_process")}, indent=1))


def _yes(x: bool) -> str:
    return "yes" if x else "**no**"


def write_md(r: dict, path: Path) -> None:
    e = r["engine_in_process"]
    note = f" ({r['suite_note']})" if r.get("suite_note") else ""
    md = [
        "# `scoreplex serve` under load vs the engine in-process",
        "",
        f"Reproduce: `{r['command']}` ({r['cores']} cores; client and server share them; {r['wall_s']} s).",
        f"Suite `{r['suite']}`{note}; real ASAP-SAS test responses, one per request; {r['server']}; load generator: "
        f"{r['client']} client.",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| HTTP throughput at saturation / in-process `Engine.score`, paired rounds (median; each) | "
        f"{r['http_vs_inprocess']}x ({', '.join(f'{x}x' for x in r['http_vs_inprocess_rounds'])}) |",
        f"| peak HTTP throughput of the sweep / in-process (uniform; skewed) | {r['http_vs_inprocess_sweep']}x; "
        f"{r['http_vs_inprocess_skewed_sweep']}x |",
        "| in-process engine throughput (uniform / skewed, responses/s; median of 3 calls) | "
        f"{e['uniform']['throughput_rps']} / "
        f"{e['skewed']['throughput_rps']} |",
        f"| p50 latency, one response, 1 in flight (HTTP; median of the paired rounds) | {r['p50_ms_single']} ms |",
        f"| engine's own single-response latency (p50, in-process; same rounds) | {r['engine_single_ms']} ms |",
        f"| HTTP / engine single-response latency, paired rounds (median; each) | {r['single_latency_ratio']}x "
        f"({', '.join(f'{x}x' for x in r['single_latency_ratio_rounds'])}) |",
        f"| saturating concurrency (within 5 % of the best throughput) | {r['saturation_concurrency']} |",
        f"| p99 latency at half load ({r['half_load_concurrency']} in flight) | {r['p99_ms_half_load']} ms |",
        f"| server RSS: idle / saturation / 4x saturation ({r['overload']['concurrency']} in flight) | "
        f"{r['rss_idle_mb']} / {r['rss_saturation_mb']} / {r['rss_overload_mb']} MB |",
        f"| RSS at 4x saturation / at saturation (a saturation level run just before the overload) | "
        f"{r['rss_overload_ratio']} |",
        f"| same, against the first saturation level (before the larger levels raised the high-water mark) | "
        f"{r['rss_overload_ratio_vs_first_saturation_level']} |",
        f"| load errors (5xx, other non-200/429, transport) / 429s / row errors | {r['load_errors']} / "
        f"{r['rejected_429']} / {r['row_errors']} |",
        f"| tracebacks in the server log | {r['server_tracebacks']} |",
        f"| fuzz cases / 5xx (hypothesis, the cases of `tests/test_service_fuzz.py`, against a real server on this "
        f"suite; {r['fuzz']['seconds']} s) | {r['fuzz_cases']} / {r['fuzz_5xx']} |",
        f"| after the fuzz: alive and ready / scores a valid request / exit status after SIGTERM / tracebacks | "
        f"{_yes(r['fuzz']['alive_after'])} / {_yes(r['fuzz']['scores_after'])} / "
        f"{r['fuzz']['exit_code_after_sigterm']} / {r['fuzz']['tracebacks']} |",
        f"| fuzz answers by status | {', '.join(f'{k}: {v}' for k, v in r['fuzz']['by_status'].items())} |",
        "",
        "Per level (closed loop: each client sends its next request when answered):",
        "",
        "| mix | in flight | client | requests | ok | 429 | errors | responses/s | p50 ms | p95 ms | p99 ms | "
        "server RSS MB | client CPU ms / request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    other = r["other_client_at_saturation"]
    for mix, pts in [
        *r["levels"].items(),
        ("uniform, saturation again", [r["saturation_again"]]),
        ("uniform, 4x saturation", [r["overload"]]),
        (f"uniform, saturation, {other['client']} client", [other]),
    ]:
        for p in pts:
            err = p["http_errors"] + p["transport_errors"]
            md.append(
                f"| {mix} | {p['concurrency']} | {p['client']} | {p['requests']} | {p['ok']} | {p['429']} | {err} | "
                f"{p['throughput_rps']} | {p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['server_rss_mb']} | "
                f"{p['client_cpu_ms_per_request']} |"
            )
    md += [
        "",
        'Notes: "saturation" is the smallest measured level within 5 % of the best uniform throughput. A paired round',
        "measures the engine in-process and then the server at saturation (and one response at a time), back to",
        "back: on this shared machine, whose speed drifts by +-20 % over minutes, the ratio within a round is the",
        "steadier figure; the sweep's ratio compares figures taken minutes apart. The in-process sweep throughput is",
        "the median of 3 whole-stream calls. Throughput grows with the batch the server can gather",
        "(the engine sorts a batch by length, so larger batches pad less); past that, latency is queueing.",
        "The machine is shared (other processes may have run during the levels): single levels are noisy by about",
        "+-15 %.",
        "",
        "![latency vs throughput](service.png)",
    ]
    path.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

"""Ray Serve vs the plain uvicorn server: the service load test of ``benchmarks/service.py`` run against both.

One run, one stream of real ASAP-SAS test responses (one response per request, uniform task mix), driven by the
same closed-loop async client (``service.drive``) at each level of ``--levels`` requests in flight:

1. the plain server: a ``scoreplex serve SUITE`` subprocess (``service.start_server``);
2. the same app on Ray Serve (:func:`scoreplex.cluster.serving.deploy`): ``--replicas`` replicas of
   ``--replica-cpus`` CPUs each, on a local Ray cluster of ``--ray-cpus`` CPUs started here.

Each server gets the same warm-up (every task's module loaded) before its levels. The figure is the ratio of the
peak throughputs, Serve / uvicorn; errors are 5xx, other non-200/429 answers and transport errors (a 429 is
back-pressure, as in the service benchmark).

3. Routing by task (skip with ``--no-routing``): two fresh Serve deployments whose replicas each hold at most
   ``--routing-max-tasks`` task modules; the skewed stream (Zipf-like) without, then with, the
   ``serve_multiplexed_model_id`` header; per deployment the modules loaded (adapter cache misses) and the hit rate,
   summed over the replicas' ``/metrics`` (each replica answers with its id in ``X-Scoreplex-Replica``). With the
   header the replica's loader warms the module, which counts one more hit per load: the module loads are the fair
   figure.

Client, server(s) and Ray share the machine's cores. Writes a JSON to ``--out`` (default runs/ray/serve.json).

    python benchmarks/ray_serve.py --suite runs/asap-sas/lora --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from service import add_load_options, asap_test_responses, drive, free_port, start_server, stop_server, stream


def run_levels(url: str, rows: list, warm: list, levels: list[int], args, task_header: str | None = None) -> list:
    """The warm-up (not reported), then one closed-loop level per concurrency."""
    asyncio.run(drive(url, warm, 2, 300.0, len(warm), client=args.client))
    out = []
    for c in levels:
        r = asyncio.run(drive(url, rows, c, args.level_s, args.level_requests, task_header, client=args.client))
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def peak(levels: list[dict]) -> dict:
    best = max(levels, key=lambda p: p["throughput_rps"])
    return {k: best[k] for k in ("concurrency", "throughput_rps", "p50_ms", "p99_ms")}


def errors(levels: list[dict]) -> int:
    return sum(p["http_errors"] + p["transport_errors"] for p in levels)


def replica_caches(url: str, replicas: int, tries: int = 400) -> dict[str, dict[str, float]]:
    """Each replica's adapter cache counters, read from ``/metrics`` until every replica has answered once."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from scoreplex.cluster.serving import REPLICA_HEADER

    seen: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(tries):
            r = client.get("/metrics")
            counters = {}
            for family in text_string_to_metric_families(r.text):
                name = family.name.removeprefix("scoreplex_adapter_cache_")
                if name in ("hits", "misses", "evictions"):
                    counters[name] = sum(s.value for s in family.samples if s.name.endswith("_total"))
            seen[r.headers[REPLICA_HEADER]] = counters
            if len(seen) >= replicas:
                break
    return seen


def routing(args, settings_for, deploy, undeploy, rows: list) -> dict:
    """Module loads and hit rate over the replicas, on the skewed stream, without and with the task header."""
    from scoreplex.cluster.serving import TASK_HEADER, ServeScaling

    out = {"max_tasks_per_replica": args.routing_max_tasks, "requests": args.routing_requests}
    scaling = ServeScaling(replicas=args.replicas, cpus_per_replica=args.replica_cpus)
    for name, header in (("default_router", None), ("task_header", TASK_HEADER)):
        settings = settings_for(max_tasks=args.routing_max_tasks)
        url = deploy(settings, scaling, address="local", num_cpus=args.ray_cpus)
        try:
            load = asyncio.run(
                drive(
                    url,
                    rows,
                    args.routing_concurrency,
                    600.0,
                    args.routing_requests,
                    task_header=header,
                    client=args.client,
                )
            )
            caches = replica_caches(url, args.replicas)
        finally:
            undeploy()
        hits = sum(c.get("hits", 0) for c in caches.values())
        misses = sum(c.get("misses", 0) for c in caches.values())
        out[name] = {
            "module_loads": int(misses),
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "replicas_read": len(caches),
            "per_replica": caches,
            "throughput_rps": load["throughput_rps"],
            "errors": load["http_errors"] + load["transport_errors"],
        }
        print(json.dumps({name: out[name]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(ap, "1,4,16,32", client="httpx")
    ap.set_defaults(suite="runs/asap-sas/lora")
    ap.add_argument("--replicas", type=int, default=2, help="Serve replicas")
    ap.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per Serve replica")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="logical CPUs of the local Ray cluster")
    ap.add_argument("--stream-rows", type=int, default=400, help="responses in the stream")
    ap.add_argument("--no-routing", action="store_true", help="skip the routing-by-task measurement")
    ap.add_argument("--routing-max-tasks", type=int, default=5, help="task modules per replica in the routing runs")
    ap.add_argument("--routing-requests", type=int, default=600, help="requests per routing run")
    ap.add_argument("--routing-concurrency", type=int, default=8, help="requests in flight in the routing runs")
    ap.add_argument("--out", default="runs/ray/serve.json")
    args = ap.parse_args()
    t_start = time.perf_counter()

    from scoreplex.cluster.serving import ServeScaling, deploy, undeploy
    from scoreplex.service import ServiceSettings

    data = asap_test_responses(args)
    rows = stream(data, "uniform", args.stream_rows, seed=0)
    skewed = stream(data, "skewed", args.stream_rows, seed=1)
    warm = [(f"warm-{t}", t, ds.texts[0]) for t, ds in data.items()]
    levels = args.levels

    def settings_for(**changes) -> ServiceSettings:
        return ServiceSettings(suite=Path(args.suite), port=free_port(), **changes)

    print("uvicorn...", flush=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        proc = start_server(args.suite, port, log_path)
        try:
            plain = run_levels(f"http://127.0.0.1:{port}", rows, warm * 2, levels, args)
        finally:
            stop_server(proc)

    print("Ray Serve...", flush=True)
    scaling = ServeScaling(replicas=args.replicas, cpus_per_replica=args.replica_cpus)
    url = deploy(settings_for(), scaling, address="local", num_cpus=args.ray_cpus)
    try:
        served = run_levels(url, rows, warm * 2 * args.replicas, levels, args)
    finally:
        undeploy()
    route = None if args.no_routing else routing(args, settings_for, deploy, undeploy, skewed)

    import ray
    import torch

    ray.shutdown()
    top_plain, top_served = peak(plain), peak(served)
    defaults = ServiceSettings.model_construct()
    report = {
        "command": "python benchmarks/ray_serve.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}",
        "suite": args.suite,
        "serve": f"{args.replicas} replica(s) x {args.replica_cpus:g} CPU on a local Ray cluster of {args.ray_cpus} "
        f"CPUs; server defaults (max_batch_rows {defaults.max_batch_rows}, max_wait_ms {defaults.max_wait_ms:g}, "
        f"queue_size {defaults.queue_size}); one response a request; {args.client} client",
        "ray_serve_vs_uvicorn": round(top_served["throughput_rps"] / top_plain["throughput_rps"], 3),
        "ray_serve_errors": errors(served),
        "uvicorn_errors": errors(plain),
        "uvicorn_peak": top_plain,
        "ray_serve_peak": top_served,
        "rejected_429": {"uvicorn": sum(p["429"] for p in plain), "ray_serve": sum(p["429"] for p in served)},
        "row_errors": {
            "uvicorn": sum(p["row_errors"] for p in plain),
            "ray_serve": sum(p["row_errors"] for p in served),
        },
        "routing": route,
        "levels": {"uvicorn": plain, "ray_serve": served},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "levels"}, indent=1))


if __name__ == "__main__":
    from scoreplex.errors import run_script

    run_script(main)

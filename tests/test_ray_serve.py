"""The service on Ray Serve: the same app as the plain server, deployed as a Serve ingress on a local Ray cluster.

One deployment (2 replicas of a tiny LoRA suite, on a free loopback port) answers what the plain app answers for
the same rows, with the same keys and endpoints; a request routed by task (Serve's multiplexing header) is scored the
same; the test deletes the application and shuts Serve down, so the session's cluster is left clean.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("ray")

from fastapi.testclient import TestClient  # noqa: E402

from lora_suites import QV_TASKS  # noqa: E402
from lora_suites import train_tiny_suite as _train  # noqa: E402
from scoreplex.errors import ConfigError  # noqa: E402
from scoreplex.methods import MethodSettings  # noqa: E402
from scoreplex.service import ServiceSettings, create_app  # noqa: E402

SCORER_KEY = "scorer-key-0123456789abcdef"


@pytest.fixture(scope="module")
def served_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path):
    root = tmp_path_factory.mktemp("ray-serve") / "served"
    qv = {t: demo_datasets[t] for t in QV_TASKS}
    _train(qv, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(lora_r=4, lora_alpha=8), max_length=64)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scaling_settings_are_checked():
    from scoreplex.cluster.serving import ServeScaling

    with pytest.raises(ConfigError, match="--max-replicas"):
        ServeScaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match="--replicas"):
        ServeScaling(replicas=0)
    auto = ServeScaling(min_replicas=1, max_replicas=4, target_ongoing_requests=3).deployment_options(queue_size=8)
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3}
    assert "num_replicas" not in auto
    fixed = ServeScaling(replicas=2, cpus_per_replica=0.5).deployment_options(queue_size=8)
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"] == {"num_cpus": 0.5}


def test_cli_refuses_scaling_flags_without_ray(served_suite):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    result = CliRunner().invoke(app, ["serve", str(served_suite), "--replicas", "2", "--max-replicas", "3"])
    assert result.exit_code == 2
    assert "--replicas, --max-replicas: only with --ray" in result.output


def test_serve_deployment_answers_as_the_plain_app(ray_cluster, served_suite, tiny_backbone_path, demo_datasets):
    import httpx

    from scoreplex.cluster.serving import REPLICA_HEADER, TASK_HEADER, ServeScaling, deploy, undeploy

    settings = ServiceSettings(
        suite=served_suite,
        backbone=str(tiny_backbone_path),
        port=_free_port(),
        api_keys=f"scorer:{SCORER_KEY}",
        max_wait_ms=20,
    )
    rng = np.random.default_rng(0)
    pairs = [(t, x) for t in QV_TASKS for x in demo_datasets[t].texts[:5]]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    body = {"responses": [{"id": f"r{i}", "task": t, "text": x} for i, (t, x) in enumerate(pairs)]}
    one_task = {"responses": [r for r in body["responses"] if r["task"] == QV_TASKS[0]]}
    auth = {"Authorization": f"Bearer {SCORER_KEY}"}
    with TestClient(create_app(settings)) as plain:
        want = plain.post("/v1/score", json=body, headers=auth).json()
        want_one = plain.post("/v1/score", json=one_task, headers=auth).json()
        want_tasks = plain.get("/v1/tasks", headers=auth).json()

    url = deploy(settings, ServeScaling(replicas=2, cpus_per_replica=1), log=lambda _: None)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").json()["ready"] is True
            refused = client.post("/v1/score", json=body, headers={"Authorization": "Bearer wrong-key"})
            assert refused.status_code == 401 and refused.json()["detail"]["reason"] == "unauthorized"
            assert client.get("/v1/tasks", headers=auth).json() == want_tasks

            got = client.post("/v1/score", json=body, headers=auth)
            assert got.status_code == 200 and got.headers[REPLICA_HEADER]
            routed = client.post("/v1/score", json=one_task, headers={**auth, TASK_HEADER: QV_TASKS[0]})
            assert routed.status_code == 200
            metrics = client.get("/metrics").text
        for answer, expected in ((got.json(), want), (routed.json(), want_one)):
            assert answer["suite"] == expected["suite"]
            assert len(answer["results"]) == len(expected["results"])
            for a, b in zip(answer["results"], expected["results"], strict=True):
                assert (a["id"], a["task"], a["scores"], a["route"], a["error"]) == (
                    b["id"],
                    b["task"],
                    b["scores"],
                    b["route"],
                    b["error"],
                )
                for dim, probs in b["probabilities"].items():
                    np.testing.assert_allclose(a["probabilities"][dim], probs, atol=1e-5, rtol=0)
        assert "scoreplex_adapter_cache_hits" in metrics
    finally:
        undeploy()
    with pytest.raises(httpx.TransportError):  # Serve's proxy is gone with the application
        httpx.get(f"{url}/healthz", timeout=5)

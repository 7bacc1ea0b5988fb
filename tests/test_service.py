"""The scoring service over HTTP: scoring through the batcher equals the engine, per-row errors, keys and roles,
limits, back-pressure, admin changes of the suite, metrics, and a real uvicorn process shut down by SIGTERM.

Most tests drive the app in-process with FastAPI's TestClient (the lifespan loads the engine); one starts
`scoreplex serve` as a subprocess on 127.0.0.1. Suites are tiny LoRA suites on the tiny BERT.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from lora_suites import QK_TASKS, QV_TASKS  # noqa: E402
from lora_suites import train_tiny_suite as _train  # noqa: E402
from scoreplex.engine import Engine  # noqa: E402
from scoreplex.errors import ConfigError  # noqa: E402
from scoreplex.methods import MethodSettings  # noqa: E402
from scoreplex.service import ServiceSettings, create_app  # noqa: E402
from scoreplex.service.batching import Batcher, Closing  # noqa: E402
from scoreplex.service.keys import ApiKeys  # noqa: E402
from scoreplex.suite import MANIFEST_FILE, MODULE_FILE, TASK_FILE, Suite  # noqa: E402

SCORER_KEY = "scorer-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
WAIT_S = 30.0
"""Upper bound of every wait in these tests."""


@pytest.fixture(scope="module")
def served_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    """The suite the service serves: the two QV demo tasks (one ordinal, one multi-label)."""
    root = tmp_path_factory.mktemp("service") / "served"
    qv = {t: demo_datasets[t] for t in QV_TASKS}
    _train(qv, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(lora_r=4, lora_alpha=8), max_length=64)
    return root


@pytest.fixture(scope="module")
def other_suite(tmp_path_factory, demo_datasets, tiny_bb, tiny_backbone_path) -> Path:
    """Another suite on the same backbone, whose tasks an admin adds to the served one."""
    root = tmp_path_factory.mktemp("service-src") / "other"
    qk = {t: demo_datasets[t] for t in QK_TASKS}
    _train(qk, root, tiny_bb, tiny_backbone_path, "lora", MethodSettings(lora_r=2, lora_alpha=8), max_length=64)
    return root


@pytest.fixture
def suite_copy(served_suite, tmp_path) -> Path:
    dest = tmp_path / "suite"
    shutil.copytree(served_suite, dest)
    return dest


@pytest.fixture
def make_app(tiny_backbone_path):
    def make(suite: Path, **settings):
        return create_app(ServiceSettings(suite=suite, backbone=str(tiny_backbone_path), **settings))

    return make


@pytest.fixture(scope="module")
def texts(demo_datasets) -> dict[str, list[str]]:
    return {t: list(demo_datasets[t].texts[:6]) for t in (*QV_TASKS, *QK_TASKS)}


def _pairs(texts, tasks) -> list[tuple[str, str]]:
    pairs = [(t, x) for t in tasks for x in texts[t]]
    order = np.random.default_rng(0).permutation(len(pairs))
    return [pairs[i] for i in order]


def _body(pairs) -> dict:
    return {"responses": [{"id": f"r{i}", "task": t, "text": x} for i, (t, x) in enumerate(pairs)]}


def _assert_equal_to_engine(results, expected, pairs) -> None:
    assert len(results) == len(expected) == len(pairs)
    for i, (got, want, (task, _)) in enumerate(zip(results, expected, pairs, strict=True)):
        assert got["id"] == f"r{i}" and got["task"] == task and got["error"] is None
        assert got["scores"] == want["labels"]
        for dim, probs in want["probs"].items():
            np.testing.assert_allclose(got["probabilities"][dim], probs, atol=1e-5, rtol=0)
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def _manifest_sha(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST_FILE).read_bytes()).hexdigest()


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- scoring ---------------------------------------------------------------------------------------------------------
def test_score_mixed_tasks_equals_the_engine_and_names_the_suite(served_suite, make_app, tiny_bb, texts):
    pairs = _pairs(texts, QV_TASKS)
    expected = Engine(served_suite, tiny_bb).score(pairs)
    with TestClient(make_app(served_suite, max_wait_ms=50)) as client:
        r = client.post("/v1/score", json=_body(pairs))
        assert r.status_code == 200, r.text
        body = r.json()
        _assert_equal_to_engine(body["results"], expected, pairs)
        assert body["suite"]["manifest_sha256"] == _manifest_sha(served_suite)
        assert body["suite"]["method"] == "lora" and body["suite"]["tasks"] == 2

        # concurrent requests are gathered into shared batches, and each gets its own rows back
        chunks = [pairs[i : i + 3] for i in range(0, len(pairs), 3)]
        out: dict[int, dict] = {}

        def send(k: int) -> None:
            out[k] = client.post("/v1/score", json=_body(chunks[k])).json()

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(chunks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        for k, chunk in enumerate(chunks):
            _assert_equal_to_engine(out[k]["results"], expected[3 * k : 3 * k + 3], chunk)


def test_a_bad_row_fails_alone_with_its_reason(served_suite, make_app, texts):
    good = texts[QV_TASKS[0]][0]
    rows = [
        {"task": QV_TASKS[0], "text": good},
        {"task": "no-such-task", "text": good},
        {"task": "../../etc", "text": good},
        {"task": QV_TASKS[1], "text": " \u200b\t"},
        {"task": QV_TASKS[1], "text": ""},
        {"id": "x", "task": QV_TASKS[1], "text": good},
    ]
    with TestClient(make_app(served_suite)) as client:
        results = client.post("/v1/score", json={"responses": rows}).json()["results"]
        # a lone surrogate (legal in a JSON escape) cannot be tokenised: that row alone fails
        rows2 = [{"task": QV_TASKS[0], "text": "ok SURROGATE"}, {"task": QV_TASKS[1], "text": "fine"}]
        raw = json.dumps({"responses": rows2}).replace("SURROGATE", "\\ud800")
        surrogate = client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
    reasons = [r["error"]["reason"] if r["error"] else None for r in results]
    assert reasons == [None, "unknown_task", "unknown_task", "empty_text", "empty_text", None]
    assert results[5]["id"] == "x" and set(results[5]["scores"]) == set(results[5]["probabilities"])
    assert str(served_suite) not in json.dumps(results)  # no server path in an error
    assert surrogate.status_code == 200
    s = surrogate.json()["results"]
    assert s[0]["error"]["reason"] == "invalid_text" and s[1]["error"] is None


def test_tasks_list_dimensions_classes_and_metrics(served_suite, make_app):
    with TestClient(make_app(served_suite)) as client:
        tasks = client.get("/v1/tasks").json()
        one = client.get(f"/v1/tasks/{QV_TASKS[1]}").json()
        missing = client.get("/v1/tasks/nope")
        bad = client.get("/v1/tasks/..")
        ready = client.get("/readyz")
        health = client.get("/healthz")
        openapi = client.get("/openapi.json").json()
    assert [t["id"] for t in tasks["tasks"]] == list(QV_TASKS)
    spec = Suite.open(served_suite).spec(QV_TASKS[1])
    assert [d["name"] for d in one["dimensions"]] == spec.dimension_names
    assert [d["classes"] for d in one["dimensions"]] == [list(range(k)) for k in spec.class_counts]
    assert "validation" in one["metrics"] and one["available"]
    assert missing.status_code == 404 and missing.json()["detail"]["reason"] == "unknown_task"
    assert bad.status_code in (404, 422)
    assert ready.status_code == 200 and ready.json()["ready"] and health.json() == {"status": "ok"}
    assert {"/v1/score", "/v1/tasks", "/v1/tasks/{task_id}", "/healthz", "/readyz", "/metrics"} <= set(openapi["paths"])
    put = openapi["paths"]["/v1/tasks/{task_id}"]["put"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(put)


# -- keys and roles --------------------------------------------------------------------------------------------------
def test_keys_and_roles(served_suite, make_app, tmp_path, caplog):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# scoring clients\nscorer:{SCORER_KEY}\n\n", encoding="utf-8")
    app = make_app(served_suite, keys_file=keys, api_keys=f"admin:{ADMIN_KEY}")
    body = {"responses": [{"task": QV_TASKS[0], "text": "the plant uses light"}]}
    with TestClient(app) as client:
        none = client.post("/v1/score", json=body)
        wrong = client.post("/v1/score", json=body, headers={"Authorization": "Bearer " + SCORER_KEY[:-1] + "x"})
        scorer = {"Authorization": f"Bearer {SCORER_KEY}"}
        admin = {"X-API-Key": ADMIN_KEY}
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        assert wrong.status_code == 401
        assert client.post("/v1/score", json=body, headers=scorer).status_code == 200
        assert client.post("/v1/score", json=body, headers=admin).status_code == 200
        assert client.get("/v1/tasks", headers=scorer).status_code == 200
        assert client.get("/v1/tasks").status_code == 401
        forbidden = client.delete(f"/v1/tasks/{QV_TASKS[0]}", headers=scorer)
        assert forbidden.status_code == 403 and forbidden.json()["detail"]["reason"] == "forbidden"
        assert client.put(f"/v1/tasks/{QV_TASKS[0]}", json={"path": "/x"}, headers=scorer).status_code == 403
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    assert QV_TASKS[0] in Suite.open(served_suite).task_ids  # the scorer's DELETE changed nothing
    assert SCORER_KEY not in caplog.text and ADMIN_KEY not in caplog.text
    assert SCORER_KEY not in repr(app.state.service.keys) and ADMIN_KEY not in repr(app.state.service.settings)


def test_bad_keys_are_refused_naming_the_line_not_the_key(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"scorer:{SCORER_KEY}\nowner:{ADMIN_KEY}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2: unknown role 'owner'") as err:
        ApiKeys.load(keys)
    assert ADMIN_KEY not in str(err.value)
    with pytest.raises(ConfigError, match="entry 1"):
        ApiKeys.load(env_value="admin:short")
    with pytest.raises(ConfigError, match="two roles"):
        ApiKeys.load(env_value=f"admin:{ADMIN_KEY},scorer:{ADMIN_KEY}")
    ring = ApiKeys.load(env_value=f"admin:{ADMIN_KEY} scorer:{SCORER_KEY}")
    assert ring.role_of(ADMIN_KEY) == "admin" and ring.role_of(SCORER_KEY) == "scorer"
    assert ring.role_of(ADMIN_KEY + "x") is None and ring.role_of("") is None


# -- limits and validation -------------------------------------------------------------------------------------------
def test_limits_and_validation_errors_name_the_limit_or_field(served_suite, make_app):
    with TestClient(make_app(served_suite, max_body_bytes=2048, max_rows=3)) as client:
        big = client.post("/v1/score", json={"responses": [{"task": QV_TASKS[0], "text": "x" * 4000}]})
        assert big.status_code == 413 and "--max-body-bytes" in big.json()["detail"]["message"]

        def chunks():  # no Content-Length: the bytes received are counted
            yield b'{"responses": [{"task": "t", "text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        streamed = client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413

        rows = client.post("/v1/score", json={"responses": [{"task": QV_TASKS[0], "text": "a"}] * 4})
        assert rows.status_code == 413 and "max_rows=3" in rows.json()["detail"]["message"]

        missing = client.post("/v1/score", json={"responses": [{"task": QV_TASKS[0]}]})
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "responses", 0, "text"]
        bad_id = client.delete("/v1/tasks/a%20b")
        assert bad_id.status_code == 422 and bad_id.json()["detail"][0]["loc"] == ["path", "task_id"]

        # no client input gets a 500
        cases = [
            b"",
            b"{",
            b"null",
            b"[]",
            b'{"responses": []}',
            b'{"responses": "x"}',
            b'{"responses": [null]}',
            b'{"responses": [{"task": 1, "text": 2}]}',
            b'{"responses": [{"task": "t", "text": "a", "extra": 1}]}',
            b'{"responses": [{"task": "t", "text": "a"}], "more": true}',
            b"\xff\xfe\x00garbage",
            json.dumps({"responses": [{"task": "t" * 300, "text": "a"}]}).encode(),
            b'{"responses": [{"task": "demo-argument", "text": "\\u0000\\u0000"}]}',
        ]
        for data in cases:
            for ctype in ("application/json", "text/plain"):
                r = client.post("/v1/score", content=data, headers={"content-type": ctype})
                assert 400 <= r.status_code < 500 or r.status_code == 200, (data, ctype, r.status_code, r.text)
        for path, kwargs in [
            ("/v1/tasks/demo-argument", {"content": b"{", "headers": {"content-type": "application/json"}}),
            ("/v1/tasks/demo-argument", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}),
            ("/v1/tasks/demo-argument", {"json": {"path": 5}}),
            ("/v1/tasks/demo-argument", {"content": b"abc", "headers": {"content-type": "text/csv"}}),
            ("/v1/tasks/demo-argument", {"json": {"path": "/\x00"}}),
        ]:
            r = client.put(path, **kwargs)
            assert 400 <= r.status_code < 500, (path, kwargs, r.status_code, r.text)


def test_a_full_queue_answers_429_with_retry_after(served_suite, make_app):
    app = make_app(served_suite, queue_size=1, max_batch_rows=1, max_wait_ms=0)
    state = app.state.service
    release = threading.Event()
    real = state.score_batch

    def held(pairs):  # the engine call waits until the test lets it go
        release.wait(WAIT_S)
        return real(pairs)

    state.score_batch = held
    body = {"responses": [{"task": QV_TASKS[0], "text": "light and water"}]}
    with TestClient(app) as client:
        answers: list = []
        threads = [threading.Thread(target=lambda: answers.append(client.post("/v1/score", json=body)))]
        threads[0].start()
        _wait_until(lambda: state.batcher.rows_in_flight == 1, "the first request to reach the engine")
        threads.append(threading.Thread(target=lambda: answers.append(client.post("/v1/score", json=body))))
        threads[1].start()
        _wait_until(lambda: state.batcher.depth == 1, "the second request to queue")
        full = client.post("/v1/score", json=body)
        release.set()
        for t in threads:
            t.join(WAIT_S)
        metrics = client.get("/metrics").text
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert full.json()["detail"]["reason"] == "queue_full"
    assert [a.status_code for a in answers] == [200, 200]
    assert 'scoreplex_requests_rejected_total{reason="queue_full"} 1.0' in metrics


# -- admin: add, replace, remove -------------------------------------------------------------------------------------
def _upload(source: Path, task: str, **replace: bytes) -> dict:
    files = {
        TASK_FILE: (source / "tasks" / task / TASK_FILE).read_bytes(),
        MODULE_FILE: (source / "tasks" / task / MODULE_FILE).read_bytes(),
        MANIFEST_FILE: (source / MANIFEST_FILE).read_bytes(),
    }
    files.update(replace)
    return {name: (name, io.BytesIO(data)) for name, data in files.items()}


def test_admin_adds_replaces_and_removes_tasks(suite_copy, other_suite, make_app, tiny_bb, texts):
    added, by_path = QK_TASKS
    pairs = _pairs(texts, (added, by_path, QV_TASKS[0]))
    with TestClient(make_app(suite_copy, import_roots=(other_suite.parent,))) as client:
        before = client.get("/readyz").json()["suite"]["manifest_sha256"]
        r = client.put(f"/v1/tasks/{added}", files=_upload(other_suite, added))
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "created" and r.json()["suite"]["manifest_sha256"] != before
        r = client.put(f"/v1/tasks/{added}", files=_upload(other_suite, added))
        assert r.status_code == 200 and r.json()["status"] == "replaced"
        r = client.put(f"/v1/tasks/{by_path}", json={"path": str(other_suite / "tasks" / by_path)})
        assert r.status_code == 201, r.text
        outside = client.put(f"/v1/tasks/{by_path}", json={"path": str(suite_copy)})
        assert outside.status_code == 403 and outside.json()["detail"]["reason"] == "path_not_allowed"

        scored = client.post("/v1/score", json=_body(pairs)).json()
        assert scored["suite"]["manifest_sha256"] == _manifest_sha(suite_copy)
        assert [t["id"] for t in client.get("/v1/tasks").json()["tasks"]] == [*QV_TASKS, added, by_path]

        gone = client.delete(f"/v1/tasks/{added}")
        assert gone.status_code == 200 and gone.json()["status"] == "removed"
        assert client.delete(f"/v1/tasks/{added}").status_code == 404
        after = client.post("/v1/score", json={"responses": [{"task": added, "text": "energy flows"}]}).json()
    assert after["results"][0]["error"]["reason"] == "unknown_task"
    expected = Engine(other_suite, tiny_bb).score([p for p in pairs if p[0] != QV_TASKS[0]])
    mine = [r for r, p in zip(scored["results"], pairs, strict=True) if p[0] != QV_TASKS[0]]
    for got, want in zip(mine, expected, strict=True):
        for dim, probs in want["probs"].items():
            np.testing.assert_allclose(got["probabilities"][dim], probs, atol=1e-5, rtol=0)
    assert Suite.open(suite_copy, verify=True).task_ids == [*QV_TASKS, by_path]
    assert not (suite_copy / "tasks" / added).exists()


def test_a_change_made_by_another_server_on_the_same_suite_is_picked_up(suite_copy, other_suite, make_app, texts):
    """Two servers on one suite folder (as Ray Serve replicas are): an admin change sent to one reaches the other at
    its next request, without a restart."""
    added = QK_TASKS[0]
    removed = QV_TASKS[1]
    with TestClient(make_app(suite_copy)) as one, TestClient(make_app(suite_copy)) as two:
        assert [t["id"] for t in two.get("/v1/tasks").json()["tasks"]] == list(QV_TASKS)
        before = two.post("/v1/score", json=_body(_pairs(texts, (removed,)))).json()
        assert all(r["error"] is None for r in before["results"])
        assert one.put(f"/v1/tasks/{added}", files=_upload(other_suite, added)).status_code == 201
        assert one.delete(f"/v1/tasks/{removed}").status_code == 200
        assert [t["id"] for t in two.get("/v1/tasks").json()["tasks"]] == [QV_TASKS[0], *QV_TASKS[2:], added]
        assert two.get(f"/v1/tasks/{removed}").status_code == 404
        pairs = _pairs(texts, (added, removed))
        scored = two.post("/v1/score", json=_body(pairs)).json()
        expected = one.post("/v1/score", json=_body(pairs)).json()
    assert scored["suite"]["manifest_sha256"] == _manifest_sha(suite_copy) == expected["suite"]["manifest_sha256"]
    for got, want, (task, _) in zip(scored["results"], expected["results"], pairs, strict=True):
        if task == removed:
            assert got["error"]["reason"] == "unknown_task"
        else:
            assert got["error"] is None and got["scores"] == want["scores"]
            np.testing.assert_allclose(got["confidence"], want["confidence"], atol=1e-6)


def test_rejected_modules_leave_the_running_suite_untouched(suite_copy, other_suite, make_app, texts):
    import torch
    from safetensors.torch import load as load_st
    from safetensors.torch import save as save_st

    task = QK_TASKS[0]
    module = load_st((other_suite / "tasks" / task / MODULE_FILE).read_bytes())
    narrow = save_st({k: v[..., :8].contiguous() if v.dim() == 2 else v for k, v in module.items()})
    manifest = json.loads((other_suite / MANIFEST_FILE).read_text())
    alien = json.dumps({**manifest, "backbone": {**manifest["backbone"], "sha256": "0" * 64}}).encode()
    info = json.loads((other_suite / "tasks" / task / TASK_FILE).read_text())
    renamed = json.dumps({**info, "spec": {**info["spec"], "id": "someone-else"}}).encode()
    pickled = io.BytesIO()
    torch.save(module, pickled)
    cases = {
        "backbone": _upload(other_suite, task, **{MANIFEST_FILE: alien}),
        "safetensors": _upload(other_suite, task, **{MODULE_FILE: b"\x00" * 64}),
        "pickle": _upload(other_suite, task, **{MODULE_FILE: pickled.getvalue()}),
        "width": _upload(other_suite, task, **{MODULE_FILE: narrow}),
        "describes task": _upload(other_suite, task, **{TASK_FILE: renamed}),
        "not valid JSON": _upload(other_suite, task, **{TASK_FILE: b"{"}),
    }
    missing = _upload(other_suite, task)
    del missing[MANIFEST_FILE]
    before = {p: p.read_bytes() for p in sorted(suite_copy.rglob("*")) if p.is_file()}
    pairs = _pairs(texts, QV_TASKS)
    with TestClient(make_app(suite_copy)) as client:
        first = client.post("/v1/score", json=_body(pairs)).json()
        for word, files in cases.items():
            r = client.put(f"/v1/tasks/{task}", files=files)
            assert r.status_code == 422, (word, r.text)
            message = r.json()["detail"]["message"]
            assert r.json()["detail"]["reason"] == "module_rejected" and "unchanged" in message
            if word not in ("width", "pickle"):
                assert word in message, (word, message)
        r = client.put(f"/v1/tasks/{task}", files=missing)
        assert r.status_code == 422 and MANIFEST_FILE in r.json()["detail"]["message"]
        no_roots = client.put(f"/v1/tasks/{task}", json={"path": str(other_suite)})
        assert no_roots.status_code == 403
        again = client.post("/v1/score", json=_body(pairs)).json()
        assert client.get(f"/v1/tasks/{task}").status_code == 404
    assert again == first
    assert {p: p.read_bytes() for p in sorted(suite_copy.rglob("*")) if p.is_file()} == before


# -- metrics ---------------------------------------------------------------------------------------------------------
def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_batches_and_the_adapter_cache(served_suite, make_app, texts):
    with TestClient(make_app(served_suite, max_tasks=1)) as client:
        for task in (*QV_TASKS, QV_TASKS[0]):
            client.post("/v1/score", json=_body([(task, texts[task][0])]))
        client.post("/v1/score", json={"responses": []})
        samples = _samples(client.get("/metrics").text)

    def value(name: str, **labels) -> float:
        return samples[(name, frozenset(labels.items()))]

    score = {"route": "/v1/score", "method": "POST"}
    assert value("scoreplex_http_requests_total", **score, status="200") == 3
    assert value("scoreplex_http_requests_total", **score, status="422") == 1
    assert value("scoreplex_http_request_duration_seconds_count", route="/v1/score") == 4
    assert value("scoreplex_batch_rows_count") == 3 and value("scoreplex_batch_rows_sum") == 3
    assert value("scoreplex_queue_depth") == 0 and value("scoreplex_rows_in_flight") == 0
    assert value("scoreplex_rows_scored_total", outcome="scored") == 3
    # max_tasks=1 and tasks A, B, A: every request loads its module and evicts the other
    assert value("scoreplex_adapter_cache_misses_total") == 3 and value("scoreplex_adapter_cache_hits_total") == 0
    assert value("scoreplex_adapter_cache_evictions_total") == 2
    assert value("scoreplex_adapters_resident") == 1 and value("scoreplex_tasks_loaded") == 2


# -- the batcher alone -----------------------------------------------------------------------------------------------
def test_batcher_gathers_requests_never_splits_one_and_isolates_a_failure():
    """Whole requests join a batch while they fit; a batch that raises is retried request by request."""
    from concurrent.futures import ThreadPoolExecutor

    calls: list[list] = []

    def score(rows):
        calls.append(list(rows))
        if "boom" in rows and len(rows) > 1:
            raise RuntimeError("a poisoned batch")
        if rows == ["boom"]:
            raise RuntimeError("boom alone")
        return "ctx", [r * 2 for r in rows]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(score, pool, max_batch_rows=4, max_wait_s=0.2, queue_size=3)
            b.start()
            got = await asyncio.gather(b.submit(["a"]), b.submit(["b", "c"]), b.submit(["d", "e"]))
            assert got == [("ctx", ["aa"]), ("ctx", ["bb", "cc"]), ("ctx", ["dd", "ee"])]
            assert calls == [["a", "b", "c"], ["d", "e"]]  # the third request did not fit whole: next batch
            assert await b.submit(list("abcdef")) == ("ctx", [c * 2 for c in "abcdef"])  # larger: alone
            calls.clear()
            ok, bad = await asyncio.gather(b.submit(["x"]), b.submit(["boom"]), return_exceptions=True)
            assert ok == ("ctx", ["xx"]) and isinstance(bad, RuntimeError)
            await b.close(0.1)
            with pytest.raises(Closing):
                await b.submit(["z"])

    asyncio.run(main())


def test_batcher_waits_for_company_only_under_load():
    """A lone request on an idle batcher is scored at once, even with a long max wait; under load the batch waits
    for the requests that arrive, and the wait ends when arrivals go quiet, not at max wait."""
    from concurrent.futures import ThreadPoolExecutor

    calls: list[list] = []

    def score(rows):
        calls.append(list(rows))
        return None, rows

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(score, pool, max_batch_rows=16, max_wait_s=3600.0, queue_size=16, quiet_s=0.5)
            b.start()
            # idle, one request: no waiting for the hour-long max wait
            assert await asyncio.wait_for(b.submit(["a"]), WAIT_S) == (None, ["a"])
            # two at once: load. A third arrives while the batch gathers and joins it.
            first = asyncio.gather(b.submit(["b"]), b.submit(["c"]))
            await asyncio.sleep(0.01)
            third = b.submit(["d"])
            assert await asyncio.wait_for(asyncio.gather(first, third), WAIT_S) == [
                [(None, ["b"]), (None, ["c"])],
                (None, ["d"]),
            ]
            assert calls[-1] == ["b", "c", "d"]
            # after a batch of several requests, a single one waits only until arrivals go quiet
            assert await asyncio.wait_for(b.submit(["e"]), WAIT_S) == (None, ["e"])
            assert calls[-1] == ["e"]
            await b.close(1.0)

    asyncio.run(main())


def test_batcher_close_finishes_queued_requests_and_cuts_off_at_the_deadline():
    from concurrent.futures import ThreadPoolExecutor

    release = threading.Event()

    def held(rows):
        release.wait(WAIT_S)
        return None, rows

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(lambda rows: (None, rows), pool, max_batch_rows=8, max_wait_s=0.05, queue_size=8)
            b.start()
            queued = [asyncio.ensure_future(b.submit([k])) for k in range(3)]
            await asyncio.sleep(0)
            assert await b.close(WAIT_S) == 0  # queued requests finish before the batcher stops
            assert await asyncio.gather(*queued) == [(None, [0]), (None, [1]), (None, [2])]

            b = Batcher(held, pool, max_batch_rows=8, max_wait_s=0, queue_size=8)
            b.start()
            stuck = asyncio.ensure_future(b.submit(["x"]))
            deadline = time.monotonic() + WAIT_S
            while not b.rows_in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            assert await b.close(0.05) == 1  # past the deadline: cut off, answered 503 by the route
            with pytest.raises(Closing):
                await stuck
            release.set()

    asyncio.run(main())


# -- the command line and a real server ------------------------------------------------------------------------------
def test_serve_refuses_bad_settings_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from scoreplex.cli import app

    r = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", "70000"])
    assert r.exit_code == 2 and "--port (SCOREPLEX_PORT)" in r.output
    r = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert r.exit_code == 2 and "not a scoreplex suite" in r.output


def test_serve_passes_keep_alive_and_access_log_to_uvicorn(served_suite, tiny_backbone_path, monkeypatch):
    """The kept-alive timeout outlives clients' pool expiry (httpx: 5 s) unless told otherwise, and the access log
    is off unless asked for; both reach uvicorn from flags and from SCOREPLEX_* variables."""
    import uvicorn
    from typer.testing import CliRunner

    from scoreplex.cli import app

    seen: list = []

    def fake_run(self, sockets=None):  # records the config instead of serving
        seen.append((self.config.timeout_keep_alive, self.config.access_log))
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    base = ["serve", str(served_suite), "--backbone", str(tiny_backbone_path), "--port", "0"]
    runner = CliRunner()
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--keep-alive", "12.5", "--access-log"]).exit_code == 0
    r = runner.invoke(app, base, env={"SCOREPLEX_KEEP_ALIVE_S": "30", "SCOREPLEX_ACCESS_LOG": "true"})
    assert r.exit_code == 0, r.output
    assert seen == [(75.0, False), (12.5, True), (30.0, True)]
    r = runner.invoke(app, [*base, "--keep-alive", "0"])
    assert r.exit_code == 2 and "--keep-alive (SCOREPLEX_KEEP_ALIVE_S)" in r.output


_SLOW_SERVER = """
import sys, time
from pathlib import Path
from scoreplex.service.state import ServiceState
MARKER = Path(sys.argv.pop(1))
real = ServiceState.score_batch
def slow(self, pairs):  # a row saying SLOW holds the engine 2 s (so SIGTERM arrives mid-request)
    if any("SLOW" in text for _, text in pairs):
        MARKER.write_text("started")
        time.sleep(2.0)
    return real(self, pairs)
ServiceState.score_batch = slow
from scoreplex.cli import app
app()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    """Wait until a `scoreplex serve` process answers /readyz (its log in the failure if it dies or times out)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not become ready: " + log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def test_real_server_finishes_in_flight_requests_on_sigterm_and_exits_0(served_suite, tiny_backbone_path, tmp_path):
    import httpx

    port, marker, log = _free_port(), tmp_path / "engine-started", tmp_path / "server.log"
    cmd = [sys.executable, "-c", _SLOW_SERVER, str(marker), "serve", str(served_suite), "--port", str(port)]
    cmd += ["--host", "0.0.0.0", "--backbone", str(tiny_backbone_path), "--shutdown-timeout", "20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, url, log)
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            r = client.post("/v1/score", json={"responses": [{"task": QV_TASKS[0], "text": "light"}]})
            assert r.status_code == 200 and r.json()["results"][0]["error"] is None
            assert len(client.get("/v1/tasks").json()["tasks"]) == 2
        answers: list = []
        slow = {"responses": [{"id": "slow", "task": QV_TASKS[1], "text": "SLOW claim with evidence"}]}
        sender = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/score", json=slow, timeout=60)))
        sender.start()
        _wait_until(marker.exists, "the slow request to reach the engine")
        proc.send_signal(signal.SIGTERM)
        sender.join(WAIT_S)
        assert proc.wait(timeout=WAIT_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text()
    assert len(answers) == 1 and answers[0].status_code == 200, text
    assert answers[0].json()["results"][0]["id"] == "slow" and answers[0].json()["results"][0]["error"] is None
    assert "binding to 127.0.0.1 (loopback only) instead of 0.0.0.0" in text
    assert "POST /v1/score" not in text  # no access log unless asked for
    assert "Traceback" not in text

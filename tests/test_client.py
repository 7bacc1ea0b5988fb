"""The service's Python client and `scoreplex score --url`, against a real `scoreplex serve` process on loopback.

One server (with API keys, a row limit of 8) serves the tiny QV suite of tests/test_service.py for the module:
Client.score equals the in-process engine (across several requests), keys, errors and retries, and the command
line's remote output equals its local one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from typer.testing import CliRunner  # noqa: E402

from lora_suites import QV_TASKS  # noqa: E402
from scoreplex.cli import app  # noqa: E402
from scoreplex.client import (  # noqa: E402
    Client,
    RemoteBusyError,
    RemoteConnectionError,
    RemoteKeyError,
    RemoteRejectedError,
    RemoteScorer,
    RemoteUnknownTaskError,
    manifest_sha256,
)
from scoreplex.data.readers import read_table, write_table  # noqa: E402
from scoreplex.engine import Engine  # noqa: E402
from scoreplex.errors import DataError  # noqa: E402
from test_service import (  # noqa: E402
    SCORER_KEY,
    _free_port,
    _pairs,
    _wait_ready,
    served_suite,  # noqa: F401  (a fixture)
    texts,  # noqa: F401  (a fixture)
)

SERVER_MAX_ROWS = 8


@pytest.fixture(scope="module")
def server(served_suite, tiny_backbone_path, tmp_path_factory):  # noqa: F811
    """`scoreplex serve` on 127.0.0.1 and a free port, with a scorer key; yields its URL."""
    port, log = _free_port(), tmp_path_factory.mktemp("client-server") / "server.log"
    cmd = [sys.executable, "-c", "from scoreplex.cli import app; app()", "serve", str(served_suite)]
    cmd += ["--port", str(port), "--backbone", str(tiny_backbone_path), "--max-rows", str(SERVER_MAX_ROWS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SCOREPLEX_API_KEYS": f"scorer:{SCORER_KEY}"}
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def client(server):
    with Client(server, SCORER_KEY, max_rows=5) as c:
        yield c


def test_client_score_equals_the_engine_across_batched_requests(client, served_suite, tiny_bb, texts):  # noqa: F811
    pairs = _pairs(texts, QV_TASKS)  # 12 rows: three requests of at most 5
    expected = Engine(served_suite, tiny_bb).score(pairs)
    as_dicts = [{"id": f"r{i}", "task": t, "text": x} for i, (t, x) in enumerate(pairs)]
    for results in (client.score(as_dicts), client.score(pairs)):
        assert len(results) == len(pairs)
        for got, want, (task, _) in zip(results, expected, pairs, strict=True):
            assert got["task"] == task and got["error"] is None and got["scores"] == want["labels"]
            for dim, probs in want["probs"].items():
                np.testing.assert_allclose(got["probabilities"][dim], probs, atol=1e-5, rtol=0)
    assert [r["id"] for r in client.score(as_dicts)] == [f"r{i}" for i in range(len(pairs))]
    bad = client.score([(QV_TASKS[0], "   "), ("no-such-task", "text")])
    assert [r["error"]["reason"] for r in bad] == ["empty_text", "unknown_task"]


def test_tasks_health_ready_and_errors(client, server, served_suite):  # noqa: F811
    listing = client.tasks()
    assert [t["id"] for t in listing["tasks"]] == list(QV_TASKS)
    assert listing["suite"]["manifest_sha256"] == manifest_sha256(served_suite)
    assert client.task(QV_TASKS[1])["id"] == QV_TASKS[1]
    assert client.health() == {"status": "ok"} and client.ready()["ready"] is True
    with pytest.raises(RemoteUnknownTaskError, match="not in the served suite"):
        client.task("nope")
    with Client(server, SCORER_KEY, max_rows=SERVER_MAX_ROWS + 1) as big:
        with pytest.raises(RemoteRejectedError, match="max_rows=8") as err:
            big.score([(QV_TASKS[0], "light")] * (SERVER_MAX_ROWS + 1))
    assert err.value.status == 413


def test_no_key_or_a_wrong_key_is_a_key_error_naming_the_role(server):
    for key in (None, SCORER_KEY + "x"):
        with Client(server, key) as c:
            with pytest.raises(RemoteKeyError, match="scorer role") as err:
                c.score([(QV_TASKS[0], "light")])
            assert err.value.status == 401 and "--key" in str(err.value)
            assert c.health() == {"status": "ok"}  # no key needed
    assert SCORER_KEY not in repr(Client(server, SCORER_KEY))


def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    with Client(url) as c, pytest.raises(RemoteConnectionError, match=f"cannot connect to {url}"):
        c.health()


def test_429_is_retried_after_retry_after_then_fails():
    answers = iter([429, 429, 200])
    waits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers, 429)
        if status == 429:
            detail = {"reason": "queue_full", "message": "the server's queue is full (1 requests); retry shortly."}
            return httpx.Response(429, json={"detail": detail}, headers={"Retry-After": "2"})
        return httpx.Response(200, json={"status": "ok"})

    with Client("http://x", transport=httpx.MockTransport(handler), sleep=waits.append, max_retries=3) as c:
        assert c.health() == {"status": "ok"}
        assert waits == [2.0, 2.0]
        waits.clear()
        with pytest.raises(RemoteBusyError, match="queue is full.*after 3 retries") as err:
            c.health()
    assert waits == [2.0, 2.0, 2.0] and err.value.status == 429


def test_a_connection_closed_in_the_pool_is_retried_then_fails():
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"status": "ok"})

    with Client("http://x", transport=httpx.MockTransport(flaky), max_retries=2) as c:
        assert c.health() == {"status": "ok"} and calls == 2

    def gone(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    with Client("http://x", transport=httpx.MockTransport(gone), max_retries=2) as c:
        with pytest.raises(RemoteConnectionError, match="GET http://x/healthz failed: connection reset"):
            c.health()


def test_a_one_task_request_names_its_task_for_ray_serve_routing():
    from scoreplex.client import TASK_HEADER

    seen: list[tuple[str | None, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        rows = json.loads(request.content)["responses"]
        seen.append((request.headers.get(TASK_HEADER), [r["task"] for r in rows]))
        return httpx.Response(200, json={"suite": {}, "results": [{"task": r["task"]} for r in rows]})

    with Client("http://x", transport=httpx.MockTransport(handler), max_rows=2) as c:
        c.score([("a", "x"), ("a", "y"), ("a", "z"), ("b", "w")])
    assert seen == [("a", ["a", "a"]), (None, ["a", "b"])]  # one task: named; mixed: no header


def test_remote_scorer_fails_a_refused_row_naming_its_id(client, served_suite):  # noqa: F811
    scorer = RemoteScorer(client, expect_manifest_sha256=manifest_sha256(served_suite))
    parts = scorer.predict_mixed([QV_TASKS[0], QV_TASKS[1]], ["light", "claim and evidence"], ["a", "b"])
    assert sorted(p for positions, _ in parts for p in positions) == [0, 1]
    with pytest.raises(DataError, match=r"response 'b'.*empty_text"):
        scorer.predict_mixed([QV_TASKS[0], QV_TASKS[1]], ["light", " \u200b "], ["a", "b"])
    with pytest.raises(Exception, match="serves another suite"):
        RemoteScorer(client, expect_manifest_sha256="0" * 64)


# -- the command line ------------------------------------------------------------------------------------------------
def test_score_url_writes_the_local_output_and_refuses_a_finished_one(
    server,
    served_suite,  # noqa: F811
    tiny_backbone_path,
    texts,  # noqa: F811
    tmp_path: Path,
):
    rows = [{"id": f"s{i}", "task": t, "text": x} for i, (t, x) in enumerate(_pairs(texts, QV_TASKS))]
    data = write_table(tmp_path / "in.csv", rows)
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    runner = CliRunner()
    common = ["--no-progress", "--chunk-rows", "5"]
    r = runner.invoke(app, ["score", str(served_suite), str(data), str(local), "--backbone", str(tiny_backbone_path)])
    assert r.exit_code == 0, r.output
    url_args = ["--url", server, "--key", SCORER_KEY]
    r = runner.invoke(app, ["score", str(served_suite), str(data), str(remote), *url_args, *common])
    assert r.exit_code == 0, r.output
    want, got = read_table(local), read_table(remote)
    assert list(got[0]) == list(want[0]) and len(got) == len(want) == len(rows)
    for g, w in zip(got, want, strict=True):
        for col, value in w.items():
            if col.startswith("prob_") or col == "confidence":
                assert (g[col] == "") == (value == "") and (value == "" or abs(float(g[col]) - float(value)) < 1e-5)
            else:
                assert g[col] == value, (col, g, w)

    again = runner.invoke(app, ["score", str(served_suite), str(data), str(remote), *url_args, *common])
    assert again.exit_code == 2 and "already exists" in again.output and "--overwrite" in again.output
    r = runner.invoke(app, ["score", str(served_suite), str(data), str(remote), *url_args, *common, "--overwrite"])
    assert r.exit_code == 0, r.output

    args = ["score", str(served_suite), str(data), str(tmp_path / "k.csv"), "--url", server, *common]
    nokey = runner.invoke(app, args, env={"SCOREPLEX_KEY": None})
    assert nokey.exit_code == 2 and "scorer role" in nokey.output and "Traceback" not in nokey.output


def test_score_url_interrupted_resumes_to_the_uninterrupted_file(
    server,
    served_suite,  # noqa: F811
    texts,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
):
    """Ctrl-C during `score --url` keeps the chunks the server already answered; the same command then resumes after
    them and ends with the file an uninterrupted run writes."""
    from scoreplex import streaming

    rows = [{"id": f"s{i}", "task": t, "text": x} for i, (t, x) in enumerate(_pairs(texts, QV_TASKS))]
    data = write_table(tmp_path / "in.csv", rows)
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    args = ["--url", server, "--key", SCORER_KEY, "--no-progress", "--chunk-rows", "4"]
    runner = CliRunner()
    r = runner.invoke(app, ["score", str(served_suite), str(data), str(whole), *args])
    assert r.exit_code == 0, r.output

    real, calls = streaming.score_chunk, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(streaming, "score_chunk", interrupted)
    r = runner.invoke(app, ["score", str(served_suite), str(data), str(out), *args])
    assert r.exit_code == 130 and "resume" in r.output
    assert streaming.read_progress(out)["rows_done"] == 8
    monkeypatch.undo()
    r = runner.invoke(app, ["score", str(served_suite), str(data), str(out), *args])
    assert r.exit_code == 0 and "resumed after 8 rows" in r.output, r.output
    assert out.read_bytes() == whole.read_bytes()

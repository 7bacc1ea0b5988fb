"""A Python client of the scoring service (``scoreplex serve``), and a MixedScorer that scores through it.

:class:`Client` wraps the HTTP API: :meth:`Client.score` sends responses of any mix of tasks (cut into requests of at
most ``max_rows``) and returns the server's per-response results; :meth:`Client.tasks`, :meth:`Client.task`,
:meth:`Client.health` and :meth:`Client.ready` read the rest. HTTP errors become :class:`RemoteError` subclasses
carrying the server's message: :class:`RemoteKeyError` (401/403, naming the role needed), :class:`RemoteBusyError`
(429/503 still refused after ``max_retries`` waits of the server's Retry-After), :class:`RemoteRejectedError`
(400/404/413/422) and :class:`RemoteConnectionError` (no server answers at the URL).

:class:`RemoteScorer` is a :class:`scoreplex.predictions.MixedScorer`: the file streamer can be handed it, so
``scoreplex score SUITE DATA OUT --url URL`` writes the same resumable output as the local command, scored by the
server. It checks that the server serves the same suite (the SHA-256 of its manifest.json) on every answer, and a
response the server refuses fails the run with a DataError naming the response's id and the server's reason.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from scoreplex.errors import ConfigError, DataError, ScoreplexError, UnknownTaskError
from scoreplex.predictions import Predictions, group_by_task
from scoreplex.tasks import TaskSpec

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_ROWS = 256
DEFAULT_MAX_RETRIES = 5
MAX_RETRY_WAIT_S = 60.0
"""A Retry-After longer than this is waited for this long only."""
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
"""How a request fails on a kept-alive connection the server closed while it sat in the pool: no answer came."""


class RemoteError(ScoreplexError):
    """The server refused a request, or could not be reached; ``status`` and ``reason`` are the server's."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


class RemoteKeyError(RemoteError, PermissionError):
    """401 (no valid key) or 403 (a key whose role may not use the route)."""


class RemoteBusyError(RemoteError):
    """429 (the server's queue is full) or 503 (starting, shutting down), still so after the retries."""


class RemoteRejectedError(RemoteError, ValueError):
    """The request itself was refused: 400, 404, 413 (over a limit), 422 (a bad field)."""


class RemoteUnknownTaskError(RemoteRejectedError, UnknownTaskError):
    """404 for a task the served suite does not hold."""


class RemoteConnectionError(RemoteError, ConnectionError):
    """No answer from the URL: connection refused, unknown host, timeout."""


def _server_message(response: httpx.Response) -> tuple[str, str | None]:
    """The server's ``(message, reason)`` from an error body: ``{"detail": {"reason", "message"}}``, a 422's list of
    field errors, or the raw text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return (response.text.strip()[:500] or response.reason_phrase), None
    if isinstance(detail, dict):
        return str(detail.get("message", detail)), detail.get("reason")
    if isinstance(detail, list):  # 422: [{"loc": [...], "msg": ...}]
        parts = []
        for err in detail:
            if isinstance(err, dict):
                loc = ".".join(str(x) for x in err.get("loc", ()))
                parts.append(f"{loc}: {err.get('msg', '')}")
        return "; ".join(parts) or str(detail), "invalid_request"
    return str(detail), None


TASK_HEADER = "serve_multiplexed_model_id"
"""Sent with a request whose responses are all of one task: Ray Serve routes it by task
(:mod:`scoreplex.cluster.serving`)."""


def _pair(item: Any, i: int) -> dict[str, Any]:
    """One request row from ``{"id"?, "task", "text"}`` or ``(task, text)``."""
    if isinstance(item, Mapping):
        missing = [k for k in ("task", "text") if k not in item]
        if missing:
            raise ConfigError(f"response {i} has no {' or '.join(missing)}; give {{'id'?, 'task', 'text'}}.")
        row = {"task": str(item["task"]), "text": str(item["text"])}
        if item.get("id") is not None:
            row["id"] = str(item["id"])
        return row
    if isinstance(item, tuple | list) and len(item) == 2:
        return {"task": str(item[0]), "text": str(item[1])}
    raise ConfigError(
        f"response {i} is a {type(item).__name__}; give a dict {{'id'?, 'task', 'text'}} or (task, text)."
    )


class Client:
    """The scoring service at ``url`` (e.g. ``http://127.0.0.1:8000``), with an API key of the scorer (or admin)
    role when the server has keys. ``timeout`` is seconds per request; ``max_rows`` the responses per score request
    (at most the server's --max-rows); ``max_retries`` how often a 429/503 is retried after the server's
    Retry-After (``sleep`` waits; ``transport`` is httpx's, for tests). A context manager (or call :meth:`close`)."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"url={url!r}; give the server's address, e.g. http://127.0.0.1:8000.")
        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ConfigError(f"max_rows={max_rows!r}; give a row count >= 1 (at most the server's --max-rows).")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries={max_retries!r}; give a count >= 0.")
        self.url = url.rstrip("/")
        self.max_rows, self.max_retries, self._sleep = max_rows, max_retries, sleep
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self._has_key = bool(key)

    def __repr__(self) -> str:  # never the key
        return f"Client({self.url!r}, key={'***' if self._has_key else None})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport -------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, ok: Iterable[int] = (200,), **kwargs) -> httpx.Response:
        """Send, retrying 429/503 after Retry-After up to ``max_retries`` times; an error status raises.

        A connection that the server closed while it sat in the pool (uvicorn closes idle keep-alive connections
        after a few seconds) fails the next request on it with no answer; that request is sent again at once, on a
        new connection, within the same ``max_retries``. Every route the client calls may be replayed: it only
        reads and scores, which changes nothing on the server."""
        ok = set(ok)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                raise RemoteConnectionError(
                    f"cannot connect to {self.url} ({exc}): is `scoreplex serve` running there? Check the URL."
                ) from None
            except httpx.TimeoutException:
                raise RemoteConnectionError(
                    f"{self.url} did not answer {method} {path} within the timeout ({self._http.timeout.read} s); "
                    "raise timeout=, or send fewer rows per request (max_rows)."
                ) from None
            except httpx.TransportError as exc:
                if isinstance(exc, STALE_CONNECTION) and attempt < self.max_retries:
                    continue  # httpx dropped the closed connection; the next try opens a new one
                raise RemoteConnectionError(f"{method} {self.url}{path} failed: {exc}.") from None
            if response.status_code in ok:
                return response
            if response.status_code in (429, 503) and attempt < self.max_retries:
                self._sleep(self._retry_after(response))
                continue
            raise self._error(response, method, path, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _retry_after(response: httpx.Response) -> float:
        try:
            wait = float(response.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        return min(max(wait, 0.0), MAX_RETRY_WAIT_S)

    def _error(self, response: httpx.Response, method: str, path: str, retries: int) -> RemoteError:
        status = response.status_code
        message, reason = _server_message(response)
        where = f"{method} {self.url}{path} -> {status}"
        if status == 401:
            fix = "the key sent is not valid" if self._has_key else "no key was sent"
            return RemoteKeyError(
                f"{where}: {message} This route needs a key of the scorer role (or admin), and {fix}: pass --key "
                "(key=...) with a key the server's admin gave you.",
                status=status,
                reason=reason,
            )
        if status == 403:
            return RemoteKeyError(f"{where}: {message} Use a key with that role.", status=status, reason=reason)
        if status in (429, 503):
            return RemoteBusyError(
                f"{where}: {message} (still refused after {retries} retries); try again later, or raise max_retries.",
                status=status,
                reason=reason,
            )
        if status == 404 and reason == "unknown_task":
            return RemoteUnknownTaskError(f"{where}: {message}", status=status, reason=reason)
        if status == 413 and reason == "too_many_rows":
            message += f" (this client sends max_rows={self.max_rows}; lower it, e.g. --max-rows on the server)"
        if 400 <= status < 500:
            return RemoteRejectedError(f"{where}: {message}", status=status, reason=reason)
        return RemoteError(f"{where}: {message}", status=status, reason=reason)

    # -- the API -----------------------------------------------------------------------------------------------------
    def score_batches(self, responses: Sequence[Any]) -> Iterable[dict[str, Any]]:
        """The server's answer (``{"suite", "results"}``) per request of at most ``max_rows`` responses."""
        rows = [_pair(item, i) for i, item in enumerate(responses)]
        for start in range(0, len(rows), self.max_rows):
            chunk = rows[start : start + self.max_rows]
            tasks = {row["task"] for row in chunk}
            # A one-task request names its task for Ray Serve's router, which sends it to a replica that holds the
            # task's module (model multiplexing); a plain server ignores the header.
            headers = {TASK_HEADER: next(iter(tasks))} if len(tasks) == 1 else None
            yield self._request("POST", "/v1/score", json={"responses": chunk}, headers=headers).json()

    def score(self, responses: Sequence[Any]) -> list[dict[str, Any]]:
        """Score responses of any mix of tasks (dicts ``{id?, task, text}`` or ``(task, text)`` pairs): per response,
        in order, the server's result ``{id, task, scores, probabilities, confidence, error}``. A response the
        server refuses (unknown task, empty text) has ``error`` ``{reason, message}`` instead of scores."""
        results: list[dict[str, Any]] = []
        for answer in self.score_batches(responses):
            results.extend(answer["results"])
        return results

    def tasks(self) -> dict[str, Any]:
        """``{"suite": identity, "tasks": [...]}``: each task's dimensions, classes, prompt, rubric and metrics."""
        return self._request("GET", "/v1/tasks").json()

    def task(self, task_id: str) -> dict[str, Any]:
        """One task's description; RemoteUnknownTaskError if the served suite does not hold it."""
        return self._request("GET", f"/v1/tasks/{quote(str(task_id), safe='')}").json()

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"}`` while the process answers."""
        return self._request("GET", "/healthz").json()

    def ready(self) -> dict[str, Any]:
        """The server's readiness ``{"ready", "reason", "suite", "broken_tasks"}``, without raising on a 503."""
        return self._request("GET", "/readyz", ok=(200, 503)).json()


def spec_of(task: Mapping[str, Any]) -> TaskSpec:
    """The TaskSpec of a task as ``GET /v1/tasks`` describes it."""
    return TaskSpec.from_dict(
        {
            "id": task["id"],
            "dimensions": task.get("dimensions", []),
            "prompt": task.get("prompt", ""),
            "rubric": task.get("rubric", ""),
        }
    )


def manifest_sha256(suite_root: str | Path) -> str:
    """The SHA-256 of a suite's manifest.json: what the server reports as its suite's ``manifest_sha256``."""
    from scoreplex.suite import MANIFEST_FILE

    return hashlib.sha256((Path(suite_root) / MANIFEST_FILE).read_bytes()).hexdigest()


class RemoteScorer:
    """A :class:`~scoreplex.predictions.MixedScorer` that scores through a :class:`Client`.

    The task specs come from ``GET /v1/tasks`` (fetched once, again for a task they lack). With
    ``expect_manifest_sha256``, every answer must come from that suite (ConfigError otherwise: the server serves
    another suite, or an admin changed it during the run). A row the server refuses raises DataError naming its id
    and the server's reason."""

    def __init__(self, client: Client, *, expect_manifest_sha256: str | None = None) -> None:
        self.client = client
        self.expect = expect_manifest_sha256
        self.specs: dict[str, TaskSpec] = {}
        self._load_specs()

    def _check_suite(self, identity: Mapping[str, Any]) -> None:
        got = identity.get("manifest_sha256")
        if self.expect is not None and got != self.expect:
            raise ConfigError(
                f"the server at {self.client.url} serves another suite (manifest SHA-256 {str(got)[:12]}...) than the "
                f"local one ({self.expect[:12]}...): score with the suite the server serves, or point --url at a "
                "server of this suite (an admin may have changed its tasks: re-run once they match)."
            )

    def _load_specs(self) -> None:
        listing = self.client.tasks()
        self._check_suite(listing["suite"])
        self.specs = {t["id"]: spec_of(t) for t in listing["tasks"] if t.get("available", True) and t["dimensions"]}

    def _spec(self, task_id: str) -> TaskSpec:
        if task_id not in self.specs:
            self._load_specs()
        if task_id not in self.specs:
            raise UnknownTaskError(f"task {task_id!r} is not described by the server at {self.client.url}.")
        return self.specs[task_id]

    def predict_mixed(
        self, task_ids: Sequence[str], texts: Sequence[str], ids: Sequence[str]
    ) -> list[tuple[list[int], Predictions]]:
        """Per task present: its input positions and :class:`Predictions` built from the server's probabilities."""
        pairs = list(zip(task_ids, texts, strict=True))
        results: list[dict[str, Any]] = []
        for answer in self.client.score_batches(pairs):  # no ids sent: the server's answer is in request order
            self._check_suite(answer["suite"])
            results.extend(answer["results"])
        for i, row in enumerate(results):
            if row.get("error"):
                err = row["error"]
                raise DataError(
                    f"response {ids[i]!r}: the server refused it ({err.get('reason')}): {err.get('message')}",
                    task=str(task_ids[i]),
                )
        out = []
        for positions in group_by_task(task_ids).values():
            spec = self._spec(task_ids[positions[0]])
            names = spec.dimension_names
            probs = [np.asarray([results[i]["probabilities"][n] for i in positions], dtype=np.float64) for n in names]
            labels = np.asarray(  # the server answers in each dimension's scale: back to classes
                [[d.locate(str(results[i]["scores"][d.name])).cls for d in spec.dimensions] for i in positions],
                dtype=np.int64,
            )
            automated = np.asarray([results[i].get("route", "auto") != "human" for i in positions], dtype=bool)
            given = [results[i].get("confidence") for i in positions]
            pred = Predictions(
                spec=spec,
                ids=[ids[i] for i in positions],
                labels=labels,
                probs=probs,
                automated=automated,
                # the server's own confidence (the task's routing kind), where it sent one for every response
                given_confidence=None if None in given else np.asarray(given, dtype=np.float64),
            )
            out.append((positions, pred))
        return out


def remote_scorer(url: str, suite_root: str | Path, key: str | None = None, **client_options: Any) -> RemoteScorer:
    """A RemoteScorer of the server at ``url``, checked to serve the suite at ``suite_root`` (same manifest)."""
    return RemoteScorer(Client(url, key, **client_options), expect_manifest_sha256=manifest_sha256(suite_root))


__all__ = [
    "Client",
    "RemoteBusyError",
    "RemoteConnectionError",
    "RemoteError",
    "RemoteKeyError",
    "RemoteRejectedError",
    "RemoteScorer",
    "RemoteUnknownTaskError",
    "manifest_sha256",
    "remote_scorer",
    "spec_of",
]

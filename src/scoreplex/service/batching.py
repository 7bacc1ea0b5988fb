"""Dynamic batching: concurrent requests gathered into one mixed-task engine call.

Requests wait in a bounded queue. One asyncio task takes the oldest request, then keeps taking whole requests while
the batch has room (``max_batch_rows``); the batch is then scored by ``score_fn`` on ONE worker thread (the engine is
not re-entrant, and the event loop must stay free to accept requests meanwhile), and each request gets its own slice
of the rows back. A request is never split; one larger than ``max_batch_rows`` is scored alone. While a batch is
scored, new requests queue up and form the next batch.

How long a batch waits for company adapts to the load:

* a lone request on an idle server (the previous batch held one request and nothing else is queued) is scored at
  once: no waiting at one request in flight;
* under load, the batch waits up to ``max_wait_ms`` after its first request for more, but stops as soon as no new
  request has arrived for ``quiet_ms`` (the burst of clients answered by the previous batch has come back) or the
  batch is full. Without this wait, a closed loop of clients splits into two half-sized batches that alternate.

A full queue refuses at once (:class:`QueueFull`, the service's 429); a closing batcher refuses new requests
(:class:`Closing`, 503) and finishes the queued ones. If a batch's call raises (it should not: rows fail one by one),
each of its requests is retried alone so that one request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("scoreplex.service")

ScoreFn = Callable[[list[Any]], tuple[Any, list[Any]]]
"""``score_fn(rows) -> (context, one result per row)``; ``context`` (e.g. the suite's identity) goes to every request
of the batch."""


class QueueFull(Exception):
    """The queue holds ``queue_size`` requests already."""


class Closing(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class _Job:
    rows: Sequence[Any]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gather requests into batches of at most ``max_batch_rows`` rows, waiting at most ``max_wait_s`` for company
    under load and never longer than ``quiet_s`` after the last arrival (see the module's docstring).

    Args:
        score_fn: scores one batch on the worker thread (see :data:`ScoreFn`).
        executor: the single worker thread (shared with other engine work, e.g. adding tasks, so the two never
            overlap).
        on_batch: called on the event loop after each batch with (rows, requests, seconds), for metrics.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        executor: Executor,
        *,
        max_batch_rows: int,
        max_wait_s: float,
        queue_size: int,
        quiet_s: float = 0.003,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.score_fn = score_fn
        self.executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.quiet_s = min(quiet_s, max_wait_s)
        self.on_batch = on_batch
        self._jobs: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._busy = 0  # rows in the batch being scored
        self._current: list[_Job] = []  # the batch being gathered or scored
        self._last_requests = 1  # requests in the previous batch: more than one means load
        self.closing = False

    # -- state, for metrics and readiness ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch being scored)."""
        return len(self._jobs)

    @property
    def rows_in_flight(self) -> int:
        return self._busy

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- life cycle --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scoreplex-batcher")

    async def close(self, timeout_s: float) -> int:
        """Take no new requests, let the queued ones finish within ``timeout_s``, then stop. Returns how many
        requests were cut off (answered 503) when the deadline passed."""
        self.closing = True
        deadline = time.monotonic() + timeout_s
        while (self._jobs or self._current) and self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        unfinished = [*self._current, *self._jobs]  # the running batch's `finally` forgets it when cancelled
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        cut = 0
        for job in unfinished:
            if not job.future.done():
                job.future.set_exception(Closing())
                cut += 1
        self._jobs.clear()
        return cut

    # -- the request side --------------------------------------------------------------------------------------------
    async def submit(self, rows: Sequence[Any]) -> tuple[Any, list[Any]]:
        """Queue ``rows`` (one request) and wait for ``(context, their results)``. QueueFull / Closing at once."""
        if self.closing or not self.running:
            raise Closing()
        if len(self._jobs) >= self.queue_size:
            raise QueueFull()
        job = _Job(rows, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        return await job.future  # a client that goes away cancels the future; the worker skips it

    # -- the worker side ---------------------------------------------------------------------------------------------
    async def _next_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        while not self._jobs:
            self._wake.clear()
            await self._wake.wait()
        batch = self._current = [self._jobs.popleft()]  # kept in sight of `close` while it gathers
        rows = len(batch[0].rows)
        lone = self._last_requests <= 1 and not self._jobs
        deadline = loop.time() + (0.0 if lone else self.max_wait_s)
        while rows < self.max_batch_rows:
            if self._jobs:
                if rows + len(self._jobs[0].rows) > self.max_batch_rows:
                    break  # the next request waits for the next batch, whole
                job = self._jobs.popleft()
                batch.append(job)
                rows += len(job.rows)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(remaining, self.quiet_s))
            except TimeoutError:
                break  # quiet: no request arrived for quiet_s
        self._last_requests = len(batch)
        self._current = [job for job in batch if not job.future.done()]
        return self._current

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._score(batch)

    async def _call(self, rows: list[Any]) -> tuple[Any, list[Any]]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.score_fn, rows)

    async def _score(self, batch: list[_Job]) -> None:
        rows = [row for job in batch for row in job.rows]
        self._busy = len(rows)
        t0 = time.perf_counter()
        try:
            try:
                context, results = await self._call(rows)
            except Exception:
                if len(batch) == 1:
                    raise
                log.exception("a batch of %d requests failed; scoring each request alone", len(batch))
                for job in batch:
                    await self._score_alone(job)
                return
            start = 0
            for job in batch:
                part = results[start : start + len(job.rows)]
                start += len(job.rows)
                if not job.future.done():
                    job.future.set_result((context, part))
        except Exception as exc:  # noqa: BLE001 (handed to the request, which answers 500 without details)
            log.exception("a batch failed")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self._busy, self._current = 0, []
            if self.on_batch is not None:
                self.on_batch(len(rows), len(batch), time.perf_counter() - t0)

    async def _score_alone(self, job: _Job) -> None:
        try:
            result = await self._call(list(job.rows))
        except Exception as exc:  # noqa: BLE001
            log.exception("a request failed alone")
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(result)

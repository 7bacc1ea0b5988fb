"""The scoring service on Ray Serve (``scoreplex serve SUITE --ray ADDRESS``).

The SAME FastAPI app as the plain server (:func:`scoreplex.service.create_app`) runs as a Ray Serve ingress
deployment: each replica builds the app from the settings, so each replica holds one engine with its adapter cache,
its own batcher (the app's lifespan runs in the replica) and its own ``/metrics``; keys, endpoints, bodies and errors
are the plain server's. Serve's HTTP proxy binds the host and port of the settings (loopback without API keys, as
the plain server does); replicas are a fixed count or autoscaled (:class:`ServeScaling`).

Routing by task: Ray Serve model multiplexing, with the task id as the model id. A client whose request holds rows
of one task sends the header ``serve_multiplexed_model_id: <task>``; Serve's router then prefers a replica that
already holds the task (falling back to the least loaded one), and the replica warms the task's module on its
engine before the request is scored. Requests without the header (mixed-task batches) take Serve's default
power-of-two-choices routing. Why multiplexing rather than our own consistent hashing: it is Serve's own router,
so it knows each replica's queue and the set of replicas as autoscaling changes it (a hash ring of our own would
need both), and it degrades to plain load balancing when the header is absent; a task is held by each replica
it was routed to, at most ``max_tasks`` per replica (LRU), like the engine's cache. ``benchmarks/ray_serve.py``
measures the adapter cache hit rate with and without the header on a skewed stream.

Admin changes (``PUT``/``DELETE /v1/tasks/{id}``) are made by the one replica that answers them, in the suite folder
all replicas serve; every other replica sees the new ``manifest.json`` at its next request and re-reads it
(:meth:`scoreplex.service.state.ServiceState.sync_with_disk`). On several nodes the folder must be shared.

Each response carries ``X-Scoreplex-Replica`` (the replica's id), so a client can tell which replica (and which
``/metrics``) answered. Ray is imported inside functions: the plain server never imports it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scoreplex.errors import ConfigError, ScoreplexError

from . import connect

APP_NAME = "scoreplex"
"""The Serve application's name (one suite per application)."""
TASK_HEADER = "serve_multiplexed_model_id"  # the same as scoreplex.client.TASK_HEADER (which needs httpx)
"""The request header that routes a one-task request to a replica holding the task (Serve's multiplexing header)."""
REPLICA_HEADER = "x-scoreplex-replica"
"""The response header naming the replica that answered."""


@dataclass(frozen=True)
class ServeScaling:
    """How many replicas serve the suite on Ray Serve, and what each one gets."""

    replicas: int = 1
    """Replicas when not autoscaling."""
    min_replicas: int | None = None
    """Autoscaling: fewest replicas (>= 1). Giving min_replicas or max_replicas turns autoscaling on."""
    max_replicas: int | None = None
    """Autoscaling: most replicas (>= min_replicas; default: min_replicas)."""
    target_ongoing_requests: float = 8.0
    """Autoscaling: requests in flight per replica that Serve aims for (more: it adds replicas). A replica batches
    concurrent requests, so it wants several in flight."""
    cpus_per_replica: float = 1.0
    """Logical CPUs reserved per replica; torch in the replica uses that many threads (at least 1)."""

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise ConfigError(f"--replicas {self.replicas!r}: give a replica count >= 1.")
        if self.min_replicas is not None and self.min_replicas < 1:
            raise ConfigError(f"--min-replicas {self.min_replicas!r}: give a count >= 1.")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas or 1):
            raise ConfigError(
                f"--max-replicas {self.max_replicas!r} is below --min-replicas {self.min_replicas or 1}: give a "
                "maximum >= the minimum."
            )
        if not self.target_ongoing_requests > 0:
            raise ConfigError(f"--target-ongoing-requests {self.target_ongoing_requests!r}: give a number > 0.")
        if not self.cpus_per_replica > 0:
            raise ConfigError(f"--replica-cpus {self.cpus_per_replica!r}: give a number of CPUs > 0.")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def deployment_options(self, queue_size: int, shutdown_timeout_s: float = 30.0) -> dict[str, Any]:
        """Keyword arguments of ``serve.deployment`` (``.options``). A replica takes up to ``2 * queue_size``
        requests at once, so its own batcher gathers them and answers 429 when its queue is full, as the plain
        server does; on shutdown Serve gives it ``shutdown_timeout_s`` (seconds) to finish them, plus 5."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica},
            "max_ongoing_requests": 2 * queue_size,
            "graceful_shutdown_timeout_s": shutdown_timeout_s + 5.0,
        }
        if self.autoscaling:
            low = self.min_replicas or 1
            options["autoscaling_config"] = {
                "min_replicas": low,
                "max_replicas": self.max_replicas or low,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


class _TaskRouting:
    """Pure ASGI middleware of a replica: warms the task named by the multiplexing header (through Serve's
    multiplexed loader, so the router learns that this replica holds it) and names the replica in each response."""

    def __init__(self, app, *, load_task: Callable, state, replica: str) -> None:
        self.app = app
        self.load_task = load_task
        self.state = state
        self.replica = replica.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from ray import serve

        task = serve.get_multiplexed_model_id()
        if task and self.state.ready and task in self.state.engine.store:
            try:
                await self.load_task(task)
            except ScoreplexError:
                pass  # a missing or corrupt module: its rows answer task_unavailable

        async def send_named(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica)]}
            await send(message)

        await self.app(scope, receive, send_named)


class ScoringReplica:
    """One Serve replica: the service's app for ``settings`` (engine, adapter cache, batcher, metrics).

    Made a Serve ingress by :func:`build_app` (``serve.ingress()`` with :meth:`__serve_build_asgi_app__`, which
    Serve calls on the replica after ``__init__``), so the app's lifespan loads the engine in the replica.
    """

    def __init__(self, settings, cpus: float) -> None:
        import torch
        from ray import serve

        from scoreplex.service import create_app

        torch.set_num_threads(max(1, int(cpus)))
        self.service_app = create_app(settings)
        self.state = self.service_app.state.service
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (not expected): the id is only a label
            self.replica = "?"
        state = self.state

        async def load_task(task_id: str) -> str:
            await state.on_worker(state.engine.store.get, task_id)
            return task_id

        # Serve's LRU of the tasks held here, as large as the engine's (unbounded: -1); Serve detects a multiplexed
        # loader stored on the instance.
        self._load_task = serve.multiplexed(max_num_models_per_replica=settings.max_tasks or -1)(load_task)

    def __serve_build_asgi_app__(self):
        self.service_app.add_middleware(_TaskRouting, load_task=self._load_task, state=self.state, replica=self.replica)
        return self.service_app

    def check_health(self) -> None:
        """Serve's health check: unhealthy once the engine's worker stops (a replica that is loading is not asked)."""
        if self.state.batcher is not None and not self.state.batcher.running and not self.state.batcher.closing:
            raise RuntimeError("the replica's batcher stopped")


def build_app(settings, scaling: ServeScaling):
    """The Serve application (``Deployment.bind()``) serving ``settings.suite`` with ``scaling``'s replicas."""
    from ray import serve

    deployment = serve.deployment(serve.ingress()(ScoringReplica), name="ScoringReplica")
    deployment = deployment.options(**scaling.deployment_options(settings.queue_size, settings.shutdown_timeout_s))
    return deployment.bind(settings, scaling.cpus_per_replica)


def deploy(
    settings,
    scaling: ServeScaling | None = None,
    *,
    address: str | None = "local",
    num_cpus: int | None = None,
    name: str = APP_NAME,
    log: Callable[[str], None] = print,
) -> str:
    """Start or join Ray (:func:`scoreplex.cluster.connect`), start Serve's HTTP proxy on the settings' host and port,
    deploy the suite and return its URL once every replica has loaded the engine.

    The suite, backbone and keys are checked here first, so a wrong folder or keys file fails with one line before
    any replica starts. Serve's proxy options are cluster-wide: when Serve already runs on the cluster, its host and
    port stay as they are (the returned URL says which).

    Raises:
        ConfigError: Ray is missing or unreachable, or a scaling setting is wrong. SuiteError / ConfigError: the
            suite or the backbone is wrong. StartupError: the replicas did not start (their log says why).
    """
    from scoreplex.service import create_app
    from scoreplex.service.server import StartupError, bind_host
    from scoreplex.service.state import open_suite

    scaling = scaling or ServeScaling()
    keys = create_app(settings).state.service.keys  # a bad keys file stops here
    host = bind_host(settings, keys, log)
    open_suite(settings)
    connect(address, num_cpus=num_cpus)
    from ray import serve

    port = settings.port or _free_port(host)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(settings, scaling), name=name, route_prefix="/", blocking=False)
    except RuntimeError as exc:
        raise StartupError(f"the Serve deployment of {settings.suite} did not start: {exc}") from None
    url = f"http://{host}:{port}"
    replicas = (
        f"{scaling.min_replicas or 1}..{scaling.max_replicas or scaling.min_replicas} replicas (autoscaling)"
        if scaling.autoscaling
        else f"{scaling.replicas} replica(s)"
    )
    log(f"serving {settings.suite} on Ray Serve at {url} with {replicas}, {scaling.cpus_per_replica:g} CPU each")
    return url


def _free_port(host: str) -> int:
    """A free TCP port on ``host`` (Serve's proxy needs a fixed port to report: ``--port 0`` picks one here)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def undeploy(name: str = APP_NAME) -> None:
    """Delete the application (each replica's lifespan finishes its queued requests), then shut Serve down when no
    other application runs on the cluster."""
    from ray import serve

    serve.delete(name)
    if not serve.status().applications:
        serve.shutdown()


def serve_on_ray(
    settings,
    scaling: ServeScaling | None = None,
    *,
    address: str | None = "local",
    num_cpus: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """What ``scoreplex serve SUITE --ray ADDRESS`` runs: :func:`deploy`, then wait for SIGTERM or Ctrl-C, then
    :func:`undeploy` (and leave a cluster started here). Returns after the clean shutdown."""
    deploy(settings, scaling, address=address, num_cpus=num_cpus, log=log)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):  # a short wait, so the signal handler runs promptly
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log("shutting down the Serve deployment...")
        undeploy()
        if address in (None, "local"):
            import ray

            ray.shutdown()

"""Running scoreplex on a Ray cluster: training many tasks at once, batch scoring, serving, GW distances.

Everything here is optional: it needs the extra ``pip install 'scoreplex[ray]'`` (Ray Core, Ray Data, Ray Serve).
Every Ray path gives the results of the local path; the local path never imports Ray.

:func:`require_ray` imports Ray or raises a :class:`~scoreplex.errors.ConfigError` that says how to install it;
:func:`connect` starts or joins a cluster the way every ``--ray`` flag of the CLI does.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from scoreplex.errors import ConfigError

INSTALL_HINT = "install the Ray extra: pip install 'scoreplex[ray]'"


def require_ray() -> ModuleType:
    """Import and return the ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (the message gives the pip command).
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the test environment has the extra
        raise ConfigError(f"--ray needs Ray, which is not installed ({exc}); {INSTALL_HINT}.") from None
    return ray


LOCAL_SERVE_PROXY_PATIENCE = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "30",
}
"""A cluster started here shares the machine with its driver: Ray Serve's HTTP proxy is killed after 3 missed 5-second
readiness checks while it starts (or 3 missed 10-second health checks later), which a busy 2-core machine can miss.
Set before ``ray.init`` unless the environment already says otherwise; a joined cluster keeps its own settings."""


def connect(address: str | None = None, *, num_cpus: int | None = None, **init_args: Any) -> ModuleType:
    """Start or join a Ray cluster, once per process, and return the ``ray`` module.

    Args:
        address: ``None`` or ``"local"`` starts a cluster inside this process (a laptop, a CI machine);
            ``"auto"`` joins the cluster started on this machine by ``ray start --head``; ``"ray://host:10001"`` or
            ``"host:6379"`` joins a remote one. An already initialised Ray is reused as it is.
        num_cpus: logical CPUs of a cluster started here (default: the machine's cores); ignored when joining.
        **init_args: passed to ``ray.init`` (e.g. ``object_store_memory`` in bytes).

    Raises:
        ConfigError: Ray is not installed, or the address cannot be reached (the message names it).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or "local"
    args: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": True, **init_args}
    if address == "local":
        args["num_cpus"] = num_cpus
        for key, seconds in LOCAL_SERVE_PROXY_PATIENCE.items():  # read by the processes the cluster starts
            os.environ.setdefault(key, seconds)
    # A worker inherits the driver's environment, so the suite's trusted backbone roots, PYTHONPATH and thread
    # settings reach it; torch's threads per worker are set by the task itself.
    args.setdefault("runtime_env", {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("SCOREPLEX_")}})
    try:
        ray.init(**args)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"could not start or join the Ray cluster at {address!r}: {exc}. Give --ray local to start one "
            "on this machine, --ray auto to join `ray start --head`, or the cluster's address."
        ) from None
    return ray

"""The GW pairs of ``scoreplex merge --ray`` as Ray tasks: the ``T(T-1)/2`` distances spread over a cluster.

Each task's feature set is prepared once on the driver (k-means summary, normalised cost matrix:
:func:`scoreplex.merging.gromov.prepare`) and put in Ray's object store once; every pair is then one Ray task running
:func:`scoreplex.merging.gromov.gw_distance` on two of those objects, the same function on the same inputs as the
local loop, so the matrix is the local one (debiased entropic GW adds the ``T`` self pairs ``(a, a)``, run the
same way; :func:`~scoreplex.merging.gromov.gw_matrix` combines them). A pair is small work (milliseconds to a
minute), which suits Ray tasks; the object store keeps each ``(m, m)`` cost matrix in one copy per node instead of
one per pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from scoreplex.cluster import connect
from scoreplex.cluster.waiting import as_completed
from scoreplex.errors import ConfigError, ScoreplexError
from scoreplex.merging.gromov import GWResult, GWSettings, PairMap, Prepared, gw_distance


def ray_gw_pairs(address: str | None = "local", *, cpus_per_pair: float = 1.0) -> PairMap:
    """A :data:`~scoreplex.merging.gromov.PairMap` that computes the GW pairs as Ray tasks, for
    :func:`~scoreplex.merging.gromov.gw_matrix` / :func:`~scoreplex.merging.gwsmm.run_merge` (``gw_pairs=``).

    Starts or joins the cluster now (:func:`scoreplex.cluster.connect`: ``"local"``, ``"auto"`` or an address), so
    a bad address fails before the features are computed. ``cpus_per_pair``: logical CPUs each pair's task holds
    (POT's solver is single-threaded numpy; 1 is right).

    Raises:
        ConfigError: Ray is not installed, the cluster cannot be reached, or ``cpus_per_pair`` is not > 0.
        GromovError: a pair's solve failed on the cluster (raised as the local loop would).
    """
    if not cpus_per_pair > 0:
        raise ConfigError(f"cpus_per_pair={cpus_per_pair!r}; give the logical CPUs per GW pair (> 0), e.g. 1.")
    ray = connect(address)

    def run(
        ready: Mapping[str, Prepared], pairs: Sequence[tuple[str, str]], settings: GWSettings
    ) -> Iterator[tuple[int, GWResult]]:
        refs = {task_id: ray.put(prepared) for task_id, prepared in ready.items()}  # once per task, not per pair
        remote = ray.remote(gw_distance).options(num_cpus=cpus_per_pair)
        pending = {remote.remote(refs[a], refs[b], settings): n for n, (a, b) in enumerate(pairs)}
        with as_completed(ray, pending) as finished:
            for n, ref in finished:
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, ScoreplexError):  # the solver's own error, as the local loop raises it
                        raise exc.cause from None
                    raise
                yield n, result

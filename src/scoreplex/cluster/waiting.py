"""Collecting Ray tasks as they finish, with the ones left cancelled when the caller stops early."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, TypeVar

K = TypeVar("K")


@contextlib.contextmanager
def as_completed(
    ray: ModuleType, pending: Mapping[Any, K], *, force: bool = False
) -> Iterator[Iterator[tuple[K, Any]]]:
    """``with as_completed(ray, {ref: key}) as done: for key, ref in done: ...`` — each ObjectRef with its key in
    the order the tasks finish (``ray.wait``). Leaving the block before the end (an error, Ctrl-C) cancels the
    tasks not collected yet; ``force`` also kills those already running (their worker processes)."""
    left = dict(pending)

    def finished() -> Iterator[tuple[K, Any]]:
        while left:
            (ref,), _ = ray.wait(list(left), num_returns=1)
            yield left.pop(ref), ref

    try:
        yield finished()
    finally:
        for ref in left:
            ray.cancel(ref, force=force)

"""Where the scheduled job's map runs: in this process, on a pool of local processes, or on Dask.

The same function, :func:`count_files` (consecutive capture files -> one ``capture_counts.Partial``),
runs everywhere; the partials come back in file order and ``capture_counts.merge`` joins them. A
worker opens the store itself from a :class:`StoreSource` (a URL and the credentials, both
picklable), never from a live client, once per process.

- ``workers=1``: in this process (no pool to start: the right choice for a few files).
- ``workers=N`` (default: the CPUs this process may use): a ``forkserver`` pool of N processes.
  The fork server imports the map's modules once and forks each worker from it: no worker pays
  the imports, and none inherits this process's threads or open connections.
- ``scheduler="local"``: a Dask ``LocalCluster`` of N worker processes on this machine.
- ``scheduler="tcp://host:8786"``: an existing Dask cluster (``deploy/k8s/components/dask``); its
  workers need signwatch installed (the same image) and the store reachable.

A task is a run of consecutive files (at most ``FILES_PER_TASK``, and about four tasks a worker
at least), so a range of thousands of small capture files is not thousands of round trips.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from signwatch.monitoring.capture_counts import Partial, count_objects, merge

FILES_PER_TASK = 64
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class StoreSource:
    """How a worker opens the store the captures are in: the store URL and its credentials
    (``signwatch.ports.security.Credentials``, or None for the URL alone)."""

    url: str
    credentials: Any = None

    def open(self):
        from signwatch.ports import open_store

        if self.credentials is None:
            return open_store(self.url)
        return open_store(self.url, self.credentials)


_OPENED: dict[StoreSource, Any] = {}  # per process: a worker opens each store once, not once a task


def _store(source: StoreSource):
    try:
        store = _OPENED.get(source)
    except TypeError:  # credentials that cannot be hashed: opened for this task
        return source.open()
    if store is None:
        store = _OPENED[source] = source.open()
    return store


def count_files(source: StoreSource, keys: Sequence[str], start: datetime | None = None,
                end: datetime | None = None, hashes: bool = False) -> Partial:
    """The map task: the files ``keys``, one after the other, as one partial (in their order)."""
    return count_objects(_store(source), keys, start, end, hashes)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def task_groups(keys: Sequence[str], workers: int) -> list[list[str]]:
    """Consecutive runs of keys: about ``TASKS_PER_WORKER`` a worker, at most ``FILES_PER_TASK`` files each."""
    if not keys:
        return []
    size = max(1, min(FILES_PER_TASK, math.ceil(len(keys) / (workers * TASKS_PER_WORKER))))
    return [list(keys[i:i + size]) for i in range(0, len(keys), size)]


def count_range(source: StoreSource, keys: Sequence[str], start: datetime | None = None,
                end: datetime | None = None, hashes: bool = False, workers: int | None = None,
                scheduler: str | None = None, store=None) -> Partial:
    """Every file of ``keys`` counted, merged in their order. ``store``: an open store of ``source``
    that counting in this process (``workers=1``) may use instead of opening another."""
    workers = workers or default_workers()
    if scheduler:
        return _on_dask(scheduler, source, keys, start, end, hashes, workers)
    groups = task_groups(keys, workers)
    if workers <= 1 or len(groups) <= 1:
        opened = store if store is not None else _store(source)
        return count_objects(opened, keys, start, end, hashes)
    context = multiprocessing.get_context("forkserver")
    # imaging (PIL, imagehash, scipy) only where images are hashed: the fork server imports once
    context.set_forkserver_preload(["signwatch.monitoring.job_workers"] + (["signwatch.imaging"] if hashes else []))
    with ProcessPoolExecutor(max_workers=min(workers, len(groups)), mp_context=context) as pool:
        parts = list(pool.map(count_files, [source] * len(groups), groups, [start] * len(groups),
                              [end] * len(groups), [hashes] * len(groups)))
    return merge(parts)


def _on_dask(scheduler: str, source: StoreSource, keys: Sequence[str], start, end, hashes: bool,
             workers: int) -> Partial:
    import logging

    from dask.distributed import Client, LocalCluster

    if scheduler == "local":
        # Processes, one thread each: the map is Python (json, PIL) and holds the GIL.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        cluster, client = None, Client(scheduler, timeout="30s")
    try:
        n = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()) or workers
        groups = task_groups(keys, n)
        futures = client.map(count_files, [source] * len(groups), groups, start=start, end=end, hashes=hashes,
                             pure=False)
        return merge(client.gather(futures))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

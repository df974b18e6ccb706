"""Per-image work on all cores: a process pool (``spawn`` start method: safe after Keras, JAX or
TensorFlow started threads) that maps a module-level function over chunks of items, in order.
Must not write anything itself: the mapped function does.

Results come back in the items' order whatever the number of workers, so a hash index or a cache
built with ``workers=4`` is the same as one built with ``workers=1``. Warnings raised in a worker
are raised again in the parent, in order. Memory stays bounded: at most ``2 × workers`` chunks
are in flight, and each result is small (hashes, or row numbers of images a worker wrote
straight into the cache's memmap). A script that calls it with more than one worker must start
its work under ``if __name__ == "__main__":`` (``spawn`` imports the script again in each worker).
"""

from __future__ import annotations

import os
import warnings
from collections import deque

from ..data.notices import DataWarning

__all__ = ["MIN_POOL_ITEMS", "map_chunks", "resolve_workers"]

#: Fewer items than this are done in the calling process: starting workers costs a second or two,
#: about what decoding a few hundred small files takes.
MIN_POOL_ITEMS = 256


def resolve_workers(workers=None) -> int:
    """The number of worker processes: ``workers``, or every core this process may use (None or 0).

    Raises:
        ValueError: ``workers`` is not a whole number ≥ 0.
    """
    if workers is None or (not isinstance(workers, bool) and workers == 0):
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:   # not on Linux
            return max(os.cpu_count() or 1, 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"Expected workers to be a whole number >= 1 (0 or None: all cores). Received: workers={workers!r}")
    return workers


def _run_chunk(fn, chunk, kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = [fn(item, **kwargs) for item in chunk]
    return out, [(w.category, w.message if isinstance(w.message, DataWarning) else str(w.message)) for w in caught]


def map_chunks(fn, items, *, workers=None, chunk_size=32, desc=None, progress=False, **kwargs):
    """``fn(item, **kwargs)`` for every item, in order, on ``workers`` processes.

    Args:
        fn: A module-level function (the workers import it by name).
        items: A sequence of picklable items, shape (n,).
        workers: Worker processes (None: all cores); 1, or fewer than :data:`MIN_POOL_ITEMS`
            items, runs in this process.
        chunk_size: Items sent to a worker at a time (fewer when there are few items).
        desc, progress: The tqdm bar's label, and whether to show it.
        **kwargs: Passed to every call.

    Yields:
        The results, in the order of ``items``.
    """
    from tqdm.auto import tqdm

    items = list(items)
    workers = min(resolve_workers(workers), len(items))
    chunk_size = max(1, min(int(chunk_size), len(items) // (4 * max(workers, 1))))   # ≥ 4 chunks a worker
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False, unit="img")
    try:
        if workers <= 1 or len(items) < MIN_POOL_ITEMS:
            for item in items:
                yield fn(item, **kwargs)
                bar.update()
            return
        yield from _pooled(fn, items, workers, chunk_size, kwargs, bar)
    finally:
        bar.close()


def _pooled(fn, items, workers, chunk_size, kwargs, bar):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending, queued = deque(), iter(chunks)
        for chunk in queued:
            pending.append(pool.submit(_run_chunk, fn, chunk, kwargs))
            if len(pending) >= 2 * workers:
                break
        while pending:
            out, caught = pending.popleft().result()
            for chunk in queued:   # keep the pool busy: one chunk in for one out
                pending.append(pool.submit(_run_chunk, fn, chunk, kwargs))
                break
            for category, message in caught:
                warnings.warn(message, category, stacklevel=4)
            yield from out
            bar.update(len(out))

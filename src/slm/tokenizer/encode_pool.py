"""Encode big batches of text on every core: forked workers, each with its own piece cache.

Cutting text into pieces (`pieces.py`) is Python, so threads would queue on the GIL;
processes do not. Forked workers start in milliseconds and inherit the tokenizer, warm cache
included, without pickling it, so the pool is used only where fork is the platform's
default and safe: Linux. Elsewhere, and for batches too small to repay the hand-off
(pickling the texts out and the ids back), the caller encodes in its own process.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor

EncodeBatch = Callable[[list[str]], list[list[int]]]

# Below this many characters a batch is encoded in the calling process: at ~12 MB/s a
# worker would save under 10 ms, about what sending the text and ids across costs.
MIN_PARALLEL_CHARS = 256 * 1024
_worker_encode: EncodeBatch | None = None


def usable_cores() -> int:
    """Cores this process may run on (a container or `taskset` may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Linux, 2+ cores, and not inside a daemon process (a multiprocessing.Pool worker, say),
    which may not start processes of its own."""
    return (
        sys.platform.startswith("linux")
        and usable_cores() > 1
        and not multiprocessing.current_process().daemon
    )


def balanced_groups(sizes: list[int], n_groups: int) -> list[range]:
    """Cut indices 0..len(sizes) into about `n_groups` runs of about equal total size.

    >>> balanced_groups([5, 1, 1, 1, 1, 1], 2)
    [range(0, 1), range(1, 6)]
    """
    total = sum(sizes)
    if total == 0:
        return [range(len(sizes))]
    groups, start, running = [], 0, 0
    for i, size in enumerate(sizes):
        running += size
        if running * n_groups >= total * (len(groups) + 1):
            groups.append(range(start, i + 1))
            start = i + 1
    if start < len(sizes):  # texts of no characters after the last cut
        groups.append(range(start, len(sizes)))
    return groups


def _init_worker(encode: EncodeBatch) -> None:
    # The garbage collector would walk every object inherited from the parent (all of torch,
    # if loaded), copying each page it touches: freezing them made cold encoding ~20% faster.
    gc.freeze()
    global _worker_encode
    _worker_encode = encode


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    assert _worker_encode is not None, "worker started without an encoder"
    return _worker_encode(texts)


@contextlib.contextmanager
def _quiet_fork() -> Iterator[None]:
    """Fork without the two warnings meant for children that use threads.

    HF tokenizers warns when a process forks after its thread pool ran, and Python 3.12+
    when any process with threads forks: a child that used those threads' locks could hang.
    These children run only the single-threaded BPE and Python. Setting the variable for
    the moment of the fork tells HF so; the Python warning is silenced for that moment.
    """
    key = "TOKENIZERS_PARALLELISM"
    before = os.environ.get(key)
    os.environ[key] = before or "false"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        if before is None:
            del os.environ[key]


class EncodePool:
    """Forked workers that run `encode` on parts of a batch; results come back in order."""

    def __init__(self, encode: EncodeBatch, workers: int):
        self.encode = encode
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._failed = False

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        sizes = [len(t) for t in texts]
        if len(texts) < 2 or sum(sizes) < MIN_PARALLEL_CHARS:
            return self.encode(texts)
        executor = self._start()
        if executor is None:
            return self.encode(texts)
        groups = balanced_groups(sizes, self.workers)
        try:
            futures = [executor.submit(_encode_in_worker, [texts[i] for i in g]) for g in groups]
            return [ids for future in futures for ids in future.result()]
        except BrokenExecutor:  # a worker died (killed for memory, say): carry on here
            self.close()
            self._failed = True
            return self.encode(texts)

    def _start(self) -> ProcessPoolExecutor | None:
        """The workers, started on first use; None (encode here) if they cannot start."""
        if self._executor is None and not self._failed:
            context = multiprocessing.get_context("fork")
            executor = ProcessPoolExecutor(
                self.workers, context, initializer=_init_worker, initargs=(self.encode,)
            )
            try:
                with _quiet_fork():  # a fork executor forks all workers on first use
                    executor.submit(len, "").result()
            except (OSError, RuntimeError, AssertionError):  # no processes left, a sandbox...
                executor.shutdown(wait=False, cancel_futures=True)
                self._failed = True
                return None
            self._executor = executor
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

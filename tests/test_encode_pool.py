"""slm.tokenizer.encode_pool: big batches spread over forked workers give the in-process ids, in
order."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slm.tokenizer.bpe import Tokenizer
from slm.tokenizer.encode_pool import MIN_PARALLEL_CHARS, EncodePool, balanced_groups, can_fork


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=50), st.integers(1, 8))
def test_groups_cover_every_index_once_in_order(sizes: list[int], n_groups: int) -> None:
    groups = balanced_groups(sizes, n_groups)
    assert [i for g in groups for i in g] == list(range(len(sizes)))
    assert all(len(g) for g in groups)


def test_groups_are_about_equal() -> None:
    groups = balanced_groups([10] * 100, 4)
    assert [len(g) for g in groups] == [25, 25, 25, 25]


@pytest.mark.skipif(not can_fork(), reason="the pool forks: Linux with 2+ cores only")
def test_pool_gives_the_in_process_ids_in_order(make_corpus_text) -> None:
    tokenizer = Tokenizer.train([make_corpus_text(3000, seed=s) for s in range(2)], vocab_size=400)
    texts = [make_corpus_text(2000 + 300 * i, seed=i) for i in range(30)]
    assert sum(map(len, texts)) >= MIN_PARALLEL_CHARS
    expected = tokenizer._pieces.encode_batch(texts)

    pool = EncodePool(tokenizer._pieces.encode_batch, workers=2)
    try:
        assert pool.encode_batch(texts) == expected
        assert pool._executor is not None, "a batch this big should have gone to the workers"
        workers = list(pool._executor._processes.values())
        assert len(workers) == 2 and all(w.pid != os.getpid() for w in workers)
        assert pool.encode_batch(texts[:1]) == expected[:1]  # one text: encoded here
    finally:
        pool.close()
    assert all(not w.is_alive() for w in workers), "close() must end the workers"


@pytest.mark.skipif(not can_fork(), reason="the pool forks: Linux with 2+ cores only")
def test_dropping_the_tokenizer_ends_its_workers(make_corpus_text) -> None:
    tokenizer = Tokenizer.train([make_corpus_text(2000)], vocab_size=300)
    texts = [make_corpus_text(3000, seed=i) for i in range(20)]
    assert tokenizer.encode_batch(texts) == tokenizer._pieces.encode_batch(texts)
    workers = list(tokenizer._pool._executor._processes.values())
    del tokenizer
    assert all(not w.is_alive() for w in workers)


def _encode_big_batch_here(vocab_text: str, texts: list[str]) -> tuple[list[list[int]], bool]:
    tokenizer = Tokenizer.train([vocab_text], vocab_size=300)
    ids = tokenizer.encode_batch(texts)
    started = tokenizer._pool is not None and tokenizer._pool._executor is not None
    return ids, started


@pytest.mark.skipif(not can_fork(), reason="the pool forks: Linux with 2+ cores only")
def test_a_daemon_process_encodes_in_process(make_corpus_text) -> None:
    """multiprocessing.Pool workers are daemons and may not start processes of their own."""
    vocab_text = make_corpus_text(2000)
    texts = [make_corpus_text(3000, seed=i) for i in range(20)]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        ids, started = pool.apply(_encode_big_batch_here, (vocab_text, texts))
    assert not started
    assert ids == Tokenizer.train([vocab_text], vocab_size=300)._pieces.encode_batch(texts)


@pytest.mark.skipif(not can_fork(), reason="the pool forks: Linux with 2+ cores only")
def test_a_dead_worker_means_encoding_here(make_corpus_text) -> None:
    tokenizer = Tokenizer.train([make_corpus_text(2000)], vocab_size=300)
    texts = [make_corpus_text(3000, seed=i) for i in range(20)]
    expected = tokenizer._pieces.encode_batch(texts)
    pool = EncodePool(tokenizer._pieces.encode_batch, workers=2)
    pool._start()
    workers = list(pool._executor._processes.values())
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    for worker in workers:
        worker.join(timeout=10)  # dead before the batch, then also seen dead at submit
    assert pool.encode_batch(texts) == expected
    assert pool._executor is None and pool._failed

"""An ElmoEmbedder shared by threads: no thread sees another's carried states (torch's "expanded size of the
tensor" errors), and every result equals the one of a sequential run with the same batch order."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from elmo_fast import ElmoEmbedder

SENTENCES = [["the", "bank", "closed", "."], ["spring", "is", "here"], ["x"], ["a", "b", "c", "d", "e", "f"]]


def _hammer(emb: ElmoEmbedder, n_threads: int = 6, rounds: int = 12) -> tuple[list[BaseException], list]:
    """Each thread embeds batches of a different size (1..n_threads sentences): carried states of different
    batch sizes race when the calls are not serialised."""
    errors: list[BaseException] = []
    results: list = []
    start = threading.Barrier(n_threads)

    def work(k: int) -> None:
        batch = [SENTENCES[(k + j) % len(SENTENCES)] for j in range(k + 1)]
        try:
            start.wait()
            for _ in range(rounds):
                out = emb.embed_batch(batch)
                results.append((k, out))
        except BaseException as e:  # noqa: B902 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, results


@pytest.mark.parametrize("stateful", [True, False])
def test_threads_sharing_an_embedder(tiny_model, stateful):
    import torch
    opt, w = tiny_model
    emb = ElmoEmbedder(opt, w, stateful=stateful, backend="reference")
    before = torch.get_num_threads()
    try:
        errors, results = _hammer(emb)
    finally:
        torch.set_num_threads(before)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:3]]
    assert len(results) == 6 * 12
    for k, out in results:
        assert len(out) == k + 1
        for emb_k, sentence in zip(out, [SENTENCES[(k + j) % len(SENTENCES)] for j in range(k + 1)]):
            assert emb_k.shape == (3, len(sentence), emb.output_dim) and np.isfinite(emb_k).all()
    if not stateful:  # no carried state: every result equals a fresh single-thread run
        fresh = ElmoEmbedder(opt, w, stateful=False, backend="reference")
        for k, out in results[:12]:
            expected = fresh.embed_batch([SENTENCES[(k + j) % len(SENTENCES)] for j in range(k + 1)])
            for a, b in zip(out, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fast_backend_shared_by_threads(tiny_model):
    opt, w = tiny_model
    for stateful in (True, False):
        emb = ElmoEmbedder(opt, w, stateful=stateful, backend="fast")
        errors, results = _hammer(emb, n_threads=4, rounds=6)
        assert not errors, [f"{type(e).__name__}: {e}" for e in errors[:3]]
        assert len(results) == 4 * 6

import numpy as np
import pytest

from proteinperf.data import sampling
from proteinperf.data.sampling import BatchPlanSampler


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("budget", [dict(batch_size=7), dict(tokens_per_batch=300)])
@pytest.mark.parametrize("replicas", [1, 3])
def test_len_equals_the_batches_iterated(shuffle, budget, replicas):
    lengths = np.random.default_rng(0).integers(1, 120, size=503)
    for rank in range(replicas):
        sampler = BatchPlanSampler(
            lengths, shuffle=shuffle, seed=5, rank=rank, num_replicas=replicas, **budget
        )
        for epoch in range(3):
            sampler.set_epoch(epoch)
            before = len(sampler)
            assert before == len(list(sampler)) == len(sampler.batches()) == len(sampler)


def test_len_builds_the_plan_at_most_once_per_epoch(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs["epoch"])
        return plan(*args, **kwargs)

    plan = sampling.plan_batches
    monkeypatch.setattr(sampling, "plan_batches", counting)
    lengths = np.arange(1, 2000) % 97 + 1
    sampler = BatchPlanSampler(lengths, tokens_per_batch=500, rank=1, num_replicas=2)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        n = [len(sampler) for _ in range(5)]
        assert len(set(n)) == 1 and n[0] == len(list(sampler))
    assert calls == [0, 0, 1, 1]  # one plan for len(), one for iterating, per epoch
    fixed = BatchPlanSampler(lengths, batch_size=64, rank=0, num_replicas=2)
    calls.clear()
    assert len(fixed) == (-(-lengths.size // 64)) // 2 and calls == []  # counted, not planned


def test_crop_framed_marks_only_true_ends():
    """<cls> only where the protein starts, <eos> only where it ends (issue 12's crop bug)."""
    from proteinperf.data.alphabet import get_alphabet

    a = get_alphabet()
    ids = np.asarray(a.residue_token_ids, dtype=np.int64)
    residues = ids[np.random.default_rng(1).integers(20, size=60)]  # every 32-window unique
    short = sampling.crop_framed(residues[:10], 32, np.random.default_rng(0))
    assert short.tolist() == [a.cls_idx, *residues[:10].tolist(), a.eos_idx]
    first = sampling.crop_framed(residues, 32, None)
    assert first[0] == a.cls_idx and a.eos_idx not in first
    assert first[1:].tolist() == residues[:31].tolist()
    framed = [a.cls_idx, *residues.tolist(), a.eos_idx]
    starts = set()
    for seed in range(400):
        w = sampling.crop_framed(residues, 32, np.random.default_rng(seed)).tolist()
        assert len(w) == 32
        start = next(s for s in range(len(framed) - 31) if framed[s : s + 32] == w)
        assert (w[0] == a.cls_idx) == (start == 0) and (w[-1] == a.eos_idx) == (start == 30)
        assert w.count(a.cls_idx) + w.count(a.eos_idx) <= 1
        starts.add(start)
    assert starts == set(range(31))  # every window, both ends included, is drawn

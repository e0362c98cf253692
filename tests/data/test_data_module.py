import numpy as np
import pytest
import torch
from helpers import SAMPLE

from proteinperf.data import ProteinCorpus, get_alphabet
from proteinperf.data.datamodule import ProteinDataModule
from proteinperf.data.sampling import IGNORE, BatchPlanSampler


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _dm(cache, **kw):
    dm = ProteinDataModule(str(SAMPLE), cache_dir=cache, **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_fasta_on_the_fly_splits_non_empty(cache):
    dm = _dm(cache)
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sum(sizes.values()) == 866 and sizes["valid"] > 20 and sizes["test"] > 20


def test_mlm_batches_and_masking_statistics(cache):
    a = get_alphabet()
    dm = _dm(cache, batch_size=16, max_length=256)
    selected = masked = randomised = kept = residues = 0
    for batch in dm.train_dataloader():
        t, m, y = batch["tokens"], batch["padding_mask"], batch["targets"]
        assert t.dtype == y.dtype == torch.long and m.dtype == torch.bool and t.shape == y.shape
        assert t.shape[1] <= 256
        # a row lacks <cls> only when it is a 256-token window cut from inside a longer protein
        assert ((t[:, 0] == a.cls_idx) | m.all(1)).all()
        assert ((t == a.padding_idx) == ~m).all() and (y[~m] == IGNORE).all()
        sel = y != IGNORE
        assert not (sel & ((t == a.cls_idx) | (t == a.eos_idx))).any()
        residues += int((m & (t != a.cls_idx) & (t != a.eos_idx)).sum())
        selected += int(sel.sum())
        masked += int((t[sel] == a.mask_idx).sum())
        kept += int((t[sel] == y[sel]).sum())
        randomised += int(((t[sel] != y[sel]) & (t[sel] != a.mask_idx)).sum())
    assert 0.14 < selected / residues < 0.16
    assert abs(masked / selected - 0.8) < 0.02 and abs(kept / selected - 0.1 - 0.005) < 0.02
    assert abs(randomised / selected - 0.1) < 0.02


def test_evaluation_masks_every_target(cache):
    """Validation/test inputs hide every target (nothing to copy); the same targets each time."""
    a = get_alphabet()
    dm = _dm(cache, batch_size=16, max_length=256)
    first = list(dm.val_dataloader())
    selected = 0
    for batch in first:
        t, y = batch["tokens"], batch["targets"]
        sel = y != IGNORE
        selected += int(sel.sum())
        assert (t[sel] == a.mask_idx).all()
        assert not ((t == a.mask_idx) & ~sel).any()
    assert selected > 100
    again = list(dm.val_dataloader())
    assert all(torch.equal(b1["targets"], b2["targets"]) for b1, b2 in zip(first, again))


def test_clm_targets_are_next_tokens(cache):
    dm = _dm(cache, objective="clm", batch_size=4, max_length=256)
    ended = cut = 0
    for b in dm.val_dataloader():
        t, y, m = b["tokens"], b["targets"], b["padding_mask"]
        last = m.sum(1) - 1
        for i in range(t.shape[0]):
            n = int(last[i])
            assert torch.equal(y[i, :n], t[i, 1 : n + 1]) and (y[i, n:] == IGNORE).all()
            # a protein that fits ends with <eos>; a longer one is cut with no <eos> (issue 12)
            has_eos = bool(t[i, n] == get_alphabet().eos_idx)
            assert has_eos or n + 1 == 256  # only full-width windows lack <eos>
            ended, cut = ended + has_eos, cut + (not has_eos)
    assert ended > 0 and cut > 0


def test_crops_random_for_train_deterministic_for_eval(cache):
    dm = _dm(cache, max_length=32, objective="clm")
    train, val = dm.datasets["train"], dm.datasets["valid"]
    long_i = int(np.argmax(train.corpus.lengths))
    a, _ = train.example(0, long_i)
    b, _ = train.example(1, long_i)
    assert a.size == 32 and not np.array_equal(a, b)
    assert np.array_equal(train.example(0, long_i)[0], a)
    v = val.corpus
    i = int(np.argmax(v.lengths))
    first_window = val.example(5, i)[0]  # evaluation: the protein's start, no <eos> inside it
    assert first_window[0] == get_alphabet().cls_idx and first_window.size == 32
    assert np.array_equal(first_window[1:], v.tokens(i)[:31])


def test_reproducible_with_seed_and_epoch(cache):
    def first(seed, epoch):
        dm = _dm(cache, seed=seed, batch_size=8)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))["tokens"]

    assert torch.equal(first(0, 0), first(0, 0))
    assert not torch.equal(first(0, 0), first(0, 1))


def test_token_budget_batching(cache):
    dm = _dm(cache, tokens_per_batch=4096, max_length=512)
    seen = []
    for b in dm.train_dataloader():
        assert b["tokens"].numel() <= 4096 or b["tokens"].shape[0] == 1
        seen.append(b["tokens"].shape[0])
    assert sum(seen) > 700 and max(seen) > min(seen)


def test_two_ranks_disjoint_and_equal(cache):
    corpus = ProteinCorpus(_dm(cache).corpus_path, "train")
    for kw in ({"batch_size": 8}, {"tokens_per_batch": 3000}):
        ranks = [
            BatchPlanSampler(corpus.lengths, shuffle=True, seed=1, rank=r, num_replicas=2, **kw)
            for r in range(2)
        ]
        batches = [list(s) for s in ranks]
        assert len(batches[0]) == len(batches[1])
        ids = [{i for b in bs for _, i in b} for bs in batches]
        assert not ids[0] & ids[1]


def test_concatenated_windows(cache):
    dm = _dm(cache, concatenated=True, max_length=512, objective="clm", batch_size=2)
    b = next(iter(dm.train_dataloader()))
    assert b["tokens"].shape == (2, 512) and b["padding_mask"].all()
    assert (b["tokens"] == get_alphabet().eos_idx).any()


def test_mid_epoch_resume_state(cache):
    dm = _dm(cache, batch_size=8)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    it = iter(loader)
    expected = [next(it)["tokens"] for _ in range(5)]
    state = loader.state_dict()
    assert state == {"epoch": 3, "consumed": 5}
    fresh = _dm(cache, batch_size=8).train_dataloader()
    fresh.load_state_dict({"epoch": 3, "consumed": 2})
    resumed = [b["tokens"] for b in fresh][:3]
    assert all(torch.equal(x, y) for x, y in zip(resumed, expected[2:]))


def test_unigram_log_probs(cache):
    lp = _dm(cache).unigram_log_probs()
    assert lp.shape == (33,) and torch.isclose(lp.exp().sum(), torch.tensor(1.0))
    assert lp[get_alphabet().tok_to_idx["L"]] > lp[get_alphabet().tok_to_idx["W"]]

"""Per-sample seeded examples (crops, MLM masking, CLM targets), collation and batch planning.

Every random choice is a pure function of (seed, epoch, index), so a run is reproducible and a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .alphabet import get_alphabet

IGNORE = -100
_EVAL_EPOCH = 2**31 - 1  # evaluation randomness does not change with the epoch


class NoTargets(list):
    """The keys of a filler batch: evaluated like any batch, but with no targets (every one
    IGNORE), so it counts for nothing. Evaluation deals its batches round-robin; a rank left
    one short gets one of these, so that every rank runs as many evaluation steps as the
    others and reaches the metrics' collective sync (a rank with no batch at all would skip
    evaluation, and the others would wait for it)."""


class _Filler(np.ndarray):
    pass


def _rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, stream])


def frame(residues: np.ndarray) -> np.ndarray:
    a = get_alphabet()
    return np.concatenate([[a.cls_idx], residues.astype(np.int64), [a.eos_idx]])


def crop_framed(
    residues: np.ndarray, max_length: int, rng: np.random.Generator | None
) -> np.ndarray:
    """A window of at most max_length tokens of the framed sequence <cls> residues <eos>:
    random start when rng is given, else the start.

    The window is cut from the framed sequence, so <cls> appears only where the protein really
    starts and <eos> only where it really ends. (Framing each crop instead taught causal models
    that every protein ends after max_length - 2 residues.)
    """
    framed = frame(residues)
    extra = framed.size - max_length
    if extra <= 0:
        return framed
    start = int(rng.integers(extra + 1)) if rng is not None else 0
    return framed[start : start + max_length]


def mlm_example(
    tokens: np.ndarray, rng: np.random.Generator, mask_prob: float, corrupt: bool = True
):
    """Mask ~mask_prob of the residues (targets). Training (``corrupt``) follows BERT: 80%
    <mask>, 10% a random amino acid, 10% unchanged. Evaluation replaces every target with
    <mask>: a target left unchanged in the input could be copied, which would lift a model's
    accuracy ~9 points above the unigram baseline without it having learnt anything."""
    a = get_alphabet()
    special = (tokens == a.cls_idx) | (tokens == a.eos_idx) | (tokens == a.padding_idx)
    candidates = np.flatnonzero(~special)
    targets = np.full(tokens.size, IGNORE, np.int64)
    if candidates.size == 0:
        return tokens, targets
    chosen = candidates[rng.random(candidates.size) < mask_prob]
    if chosen.size == 0:  # at least one target, so no batch has an empty loss
        chosen = candidates[[int(rng.integers(candidates.size))]]
    targets[chosen] = tokens[chosen]
    tokens = tokens.copy()
    if not corrupt:
        tokens[chosen] = a.mask_idx
        return tokens, targets
    action = rng.random(chosen.size)
    tokens[chosen[action < 0.8]] = a.mask_idx
    rand = chosen[(action >= 0.8) & (action < 0.9)]
    tokens[rand] = np.asarray(a.residue_token_ids)[rng.integers(20, size=rand.size)]
    return tokens, targets


def clm_example(tokens: np.ndarray):
    targets = np.full(tokens.size, IGNORE, np.int64)
    targets[:-1] = tokens[1:]
    return tokens, targets


def collate(examples: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Pad to the longest example: tokens with <pad>, targets with -100; "padded" (a Python
    bool) says whether any example was padded, so that the training step need not ask the
    device."""
    a = get_alphabet()
    width = max(t.size for t, _ in examples)
    tokens = torch.full((len(examples), width), a.padding_idx, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (t, y) in enumerate(examples):
        tokens[i, : t.size] = torch.from_numpy(t)
        targets[i, : y.size] = torch.from_numpy(y)
    padding_mask = tokens != a.padding_idx
    padded = not bool(padding_mask.all())  # on the host, where reading it costs no wait
    return {"tokens": tokens, "padding_mask": padding_mask, "targets": targets, "padded": padded}


def plan_batches(
    lengths: np.ndarray,
    *,
    batch_size: int | None,
    tokens_per_batch: int | None,
    shuffle: bool,
    seed: int,
    epoch: int,
) -> list[np.ndarray]:
    """Indices of each batch: fixed size, or a token budget with length bucketing."""
    rng = np.random.default_rng([seed, epoch, 0x5A3])
    order = rng.permutation(lengths.size) if shuffle else np.arange(lengths.size)
    if not tokens_per_batch:
        return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    batches = []
    bucket = 4096  # sort by length within shuffled buckets: little padding, still random
    for lo in range(0, order.size, bucket):
        chunk = order[lo : lo + bucket]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        start = 0
        while start < chunk.size:
            longest = int(lengths[chunk[start]])
            count = max(1, tokens_per_batch // max(longest, 1))
            batches.append(chunk[start : start + count])
            start += count
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _dist_info(rank, num_replicas) -> tuple[int, int]:
    if num_replicas is None:
        live = dist.is_available() and dist.is_initialized()
        num_replicas = dist.get_world_size() if live else 1
        rank = dist.get_rank() if live else 0
    return int(rank or 0), int(num_replicas)


class BatchPlanSampler(DistributedSampler):
    """Yields whole batches, as lists of (epoch, index) keys, for this rank only.

    It subclasses DistributedSampler so that Lightning uses it as it is under DDP (it never
    re-wraps a DistributedSampler, whatever `use_distributed_sampler` says) and calls its
    `set_epoch`. Training: every rank gets the same number of batches (the few left over are
    dropped). Evaluation: batches are dealt round-robin, each sample exactly once, and a rank
    left one short gets a NoTargets filler batch.
    """

    def __init__(
        self,
        lengths,
        *,
        batch_size=None,
        tokens_per_batch=None,
        shuffle=True,
        seed=0,
        rank=None,
        num_replicas=None,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.tokens_per_batch = batch_size, tokens_per_batch
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.num_replicas = _dist_info(rank, num_replicas)
        self.drop_last = shuffle
        self.skip = 0  # batches already consumed in this epoch (mid-epoch resume)
        self._plan_sizes: dict[tuple, int] = {}  # plan key -> batches in the whole plan

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _plan_key(self) -> tuple:
        # Everything the plan depends on; the epoch only when shuffling.
        epoch = self.epoch if self.shuffle else None
        lengths = (id(self.lengths), self.lengths.size)
        return (epoch, self.seed, self.shuffle, self.batch_size, self.tokens_per_batch, lengths)

    def _full_plan(self) -> list[np.ndarray]:
        plan = plan_batches(
            self.lengths,
            batch_size=self.batch_size,
            tokens_per_batch=self.tokens_per_batch,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
        )
        self._plan_sizes[self._plan_key()] = len(plan)
        return plan

    def _plan_size(self) -> int:
        """Batches in the whole plan, without building it again (Lightning asks for len()
        several times an epoch; at UniRef scale a plan costs seconds)."""
        if not self.tokens_per_batch:
            return -(-self.lengths.size // self.batch_size)
        key = self._plan_key()
        if key not in self._plan_sizes:
            self._full_plan()
        return self._plan_sizes[key]

    def _kept(self, total: int) -> int:
        return total // self.num_replicas * self.num_replicas if self.drop_last else total

    def batches(self) -> list[np.ndarray]:
        plan = self._full_plan()
        mine = plan[: self._kept(len(plan))][self.rank :: self.num_replicas]
        fillers = len(self) - len(mine)
        return mine + [plan[0].view(_Filler)] * fillers

    def __iter__(self):
        epoch = self.epoch if self.shuffle else _EVAL_EPOCH
        skip, self.skip = self.skip, 0
        for batch in self.batches()[skip:]:
            keys = [(epoch, int(i)) for i in batch]
            yield NoTargets(keys) if isinstance(batch, _Filler) else keys

    def __len__(self) -> int:
        kept = self._kept(self._plan_size())
        return -(-kept // self.num_replicas)  # training: kept is a multiple of num_replicas

"""Datasets over a prepared corpus and the Lightning DataModule that batches them."""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from proteinperf.constants import OBJECTIVES

from .alphabet import get_alphabet
from .corpus import ProteinCorpus
from .prepare import CORPUS_FORMAT_VERSION, prepare
from .sampling import (
    _EVAL_EPOCH,
    IGNORE,
    BatchPlanSampler,
    NoTargets,
    _rng,
    clm_example,
    collate,
    crop_framed,
    mlm_example,
)


class _Examples(Dataset):
    """Indexed by a list of (epoch, index) keys; returns the collated batch."""

    def __init__(self, objective: str, mask_prob: float, seed: int, train: bool):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective, self.mask_prob, self.seed, self.train = objective, mask_prob, seed, train

    def example(self, epoch: int, index: int):
        raise NotImplementedError

    def _targets(self, tokens, epoch, index):
        if self.objective == "clm":
            return clm_example(tokens)
        rng = _rng(self.seed, epoch, index, 1)
        return mlm_example(tokens, rng, self.mask_prob, corrupt=self.train)

    def __getitem__(self, keys):
        if isinstance(keys, tuple):
            return self.example(*keys)
        batch = collate([self.example(e, i) for e, i in keys])
        if isinstance(keys, NoTargets):
            batch["targets"].fill_(IGNORE)
        return batch


class SequenceDataset(_Examples):
    """One framed sequence per example, cropped to max_length tokens (random crop when training;
    <cls>/<eos> only where the protein really starts/ends)."""

    def __init__(
        self,
        corpus: ProteinCorpus,
        max_length=1024,
        objective="mlm",
        mask_prob=0.15,
        seed=0,
        train=True,
    ):
        super().__init__(objective, mask_prob, seed, train)
        self.corpus, self.max_length = corpus, max_length

    def __len__(self):
        return len(self.corpus)

    @property
    def lengths(self) -> np.ndarray:
        return np.minimum(self.corpus.lengths + 2, self.max_length)

    def example(self, epoch, index):
        rng = _rng(self.seed, epoch, index, 0) if self.train else None
        tokens = crop_framed(self.corpus.tokens(index), self.max_length, rng)
        return self._targets(tokens, epoch, index)


class ConcatenatedDataset(_Examples):
    """Fixed windows of <cls> + the stream of all sequences joined by <eos> (paper: L=8192).

    Training windows move by a random shift each epoch; evaluation windows are fixed.
    """

    def __init__(
        self,
        corpus: ProteinCorpus,
        max_length=8192,
        objective="mlm",
        mask_prob=0.15,
        seed=0,
        train=True,
    ):
        super().__init__(objective, mask_prob, seed, train)
        self.corpus, self.max_length, self.width = corpus, max_length, max_length - 1
        self.stream_ends = corpus.offsets[1:] + np.arange(1, len(corpus) + 1)  # + one <eos> each
        self.stream_size = int(self.stream_ends[-1]) if len(corpus) else 0

    def __len__(self):
        return max(0, (self.stream_size - self.width) // self.width)

    @property
    def lengths(self) -> np.ndarray:
        return np.full(len(self), self.max_length)

    def _shift(self, epoch) -> int:
        if not self.train or epoch == _EVAL_EPOCH:
            return 0
        return int(np.random.default_rng([self.seed, epoch, 0xC0]).integers(self.width))

    def example(self, epoch, index):
        a = get_alphabet()
        lo = self._shift(epoch) + index * self.width
        hi = lo + self.width
        r = int(np.searchsorted(self.stream_ends, lo, side="right"))
        pieces = [np.array([a.cls_idx], np.int64)]
        while lo < hi:
            rec_start = int(self.stream_ends[r]) - int(self.corpus.lengths[r]) - 1
            seq = np.append(self.corpus.tokens(r).astype(np.int64), a.eos_idx)
            take = seq[lo - rec_start : hi - rec_start]
            pieces.append(take)
            lo += take.size
            r += 1
        return self._targets(np.concatenate(pieces), epoch, index)


class _ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (state_dict) to resume exactly mid-epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._consumed = 0

    def __iter__(self):
        self._consumed = 0
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.skip = state["consumed"]


def fasta_cache_dir(fasta: Path, cache_dir: str | None, options: dict) -> Path:
    st = fasta.stat()
    key = json.dumps(
        [str(fasta.resolve()), st.st_size, st.st_mtime_ns, CORPUS_FORMAT_VERSION, options],
        sort_keys=True,
    )
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    root = Path(cache_dir) if cache_dir else fasta.parent / ".cache" / "proteinperf"
    return root / f"{fasta.stem}-{digest}"


def ensure_corpus(data_path: str | Path, cache_dir: str | None = None, **options) -> Path:
    """A corpus directory for data_path: itself, or a FASTA prepared once into a cache.

    Safe when several processes (DDP ranks) call it at once: a file lock serialises them and
    prepare() publishes the directory with an atomic rename.
    """
    path = Path(data_path)
    if (path / "manifest.json").is_file():
        return path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: neither a corpus directory nor a FASTA file")
    out = fasta_cache_dir(path, cache_dir, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            prepare([path], out, progress=False, workers=1, command=f"cache of {path}", **options)
    return out


def unigram_log_probs(corpus: ProteinCorpus, causal: bool) -> torch.Tensor:
    """log p(token) from a corpus split's residue frequencies, add-one smoothed.

    <eos> counts once per sequence for causal models (it is a target there), never for MLM.
    """
    counts = corpus.token_counts().astype(np.float64)
    if causal:
        counts[get_alphabet().eos_idx] += len(corpus)
    counts += 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def _cluster_options(identity: float | None, clusters_file: str | None) -> dict:
    """prepare() options for a homology-aware split (none: the plain hash split)."""
    options = {}
    if identity is not None:
        options["cluster_identity"] = float(identity)
    if clusters_file is not None:
        options["clusters_file"] = str(Path(clusters_file).resolve())
    return options


class ProteinDataModule(pl.LightningDataModule):
    """Batches: tokens (B, L) framed and padded, padding_mask (True = real), targets (-100: none).

    Under DDP every loader shards itself by rank (see BatchPlanSampler), so it behaves the same
    with Lightning's `use_distributed_sampler` on or off.
    """

    def __init__(
        self,
        data_path: str,
        objective: str = "mlm",
        max_length: int = 1024,
        batch_size: int = 8,
        tokens_per_batch: int | None = None,
        concatenated: bool = False,
        mask_prob: float = 0.15,
        eval_mask_prob: float | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        valid_fraction: float = 0.05,
        test_fraction: float = 0.05,
        min_length: int = 1,
        max_residues: int | None = None,
        cluster_identity: float | None = None,
        clusters_file: str | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.save_hyperparameters()
        self.corpus_path: Path | None = None
        self.datasets: dict[str, _Examples] = {}

    def _corpus_path(self) -> Path:
        h = self.hparams
        return ensure_corpus(
            h.data_path,
            h.cache_dir,
            valid_fraction=h.valid_fraction,
            test_fraction=h.test_fraction,
            min_length=h.min_length,
            max_length=h.max_residues,
            seed=h.seed,
            **_cluster_options(h.cluster_identity, h.clusters_file),
        )

    def prepare_data(self) -> None:
        self._corpus_path()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        h = self.hparams
        self.corpus_path = self._corpus_path()
        kind = ConcatenatedDataset if h.concatenated else SequenceDataset
        # Training may mask more than the 15% that evaluation (and `proteinperf evaluate`) uses:
        # more targets per step is more signal per step, while the metric stays comparable.
        eval_mask_prob = h.mask_prob if h.eval_mask_prob is None else h.eval_mask_prob
        for split in ("train", "valid", "test"):
            self.datasets[split] = kind(
                ProteinCorpus(self.corpus_path, split),
                h.max_length,
                h.objective,
                h.mask_prob if split == "train" else eval_mask_prob,
                h.seed,
                train=split == "train",
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        h = self.hparams
        ds = self.datasets[split]
        sampler = BatchPlanSampler(
            ds.lengths,
            batch_size=h.batch_size,
            tokens_per_batch=h.tokens_per_batch,
            shuffle=shuffle,
            seed=h.seed,
        )
        return _ResumableLoader(
            ds,
            sampler=sampler,
            batch_size=None,
            num_workers=h.num_workers,
            pin_memory=h.pin_memory,
            persistent_workers=h.persistent_workers and h.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("valid", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)

    def unigram_log_probs(self) -> torch.Tensor:
        """log p(token) from training-split frequencies (add-one smoothed), a loss baseline."""
        self.setup()
        return unigram_log_probs(self.datasets["train"].corpus, self.hparams.objective == "clm")

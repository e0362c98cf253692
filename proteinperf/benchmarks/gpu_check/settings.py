"""What the GPU check runs: the full sizes for a GPU and the tiny ones of ``--dry-run``.

Everything here is a plain value, so the settings travel to the section workers as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

# Share of the remaining time budget each section may use; time a section leaves unused
# goes to the ones after it (env is generous: the first torch import on a fresh machine
# reads gigabytes of libraries).
SECTION_WEIGHTS = {"env": 0.1, "tests": 0.2, "bench": 0.2, "train": 0.5}

# Relative errors (Frobenius norm of the difference over that of the float64 reference) of
# outputs and of the gradients of q, k and v. fp32 contractions round at ~1e-7, so 1e-4 leaves
# room for long sums but not for a wrong mask or scale (errors of order 1); bf16 in/out rounds
# at 2^-9 ≈ 2e-3, and SDPA's bf16 kernels keep P in bf16. The trig kernel's sin/cos features
# make its denominator a difference of terms, which amplifies rounding ~100-fold (measured on
# CPU: 3e-3 in fp32), so it gets its own, looser bounds.
TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}
TRIG_TOLERANCES = {"float32": 1e-2, "bfloat16": 5e-2}


@dataclass(frozen=True)
class CheckShapes:
    batch: int = 2
    heads: int = 4
    length: int = 700  # several 128-position chunks and a ragged last one
    dim: int = 64
    features: int = 128  # > dim: two orthogonal blocks
    padded: int = 90  # the second sequence's last keys are padding
    decode_length: int = 256  # attention-level decoding, one token at a time
    model_decode_length: int = 96  # model-level decoding (PerformerLM.step)


@dataclass(frozen=True)
class BenchShapes:
    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)
    batch: int = 1
    heads: int = 8
    dim: int = 64
    features: int = 256
    kernels: tuple[str, ...] = ("relu", "softmax")  # the fused FAVOR+ kernels models train with
    dtype: str = "bfloat16"
    warmup: int = 2
    repeats: int = 10
    case_budget_s: float = 3.0  # timed repeats of one case stop once this much time is spent


@dataclass(frozen=True)
class TrainShapes:
    # The paper's TrEMBL model (conf/model/paper_trembl.yaml; a test keeps the two equal).
    model: dict = field(
        default_factory=lambda: {
            "d_model": 512,
            "n_layers": 36,
            "n_heads": 8,
            "d_ff": 1024,
            "nb_features": 256,
            "max_len": 1024,
            "positional": "learned",
            "lm_head": "linear",
            "attention": "favor_relu",
            "redraw_interval": 1000,
        }
    )
    length: int = 1024
    batch: int = 8
    dropout: float = 0.0  # as the GPU preset of `make reproduce`
    lr: float = 5e-4
    warmup_steps: int = 50
    clip: float = 0.5  # the paper's global-norm clip (conf/trainer/default.yaml)
    mask_prob: float = 0.15
    eval_batches: int = 4  # fixed held-out windows, scored before and after training
    loss_window: int = 10  # steps averaged for the start and end training loss
    max_residues: int = 20_000_000  # read at most this much of the corpus


@dataclass(frozen=True)
class Settings:
    dry_run: bool = False
    device: str = "cuda"
    budget_s: float = 480.0
    train_s: float = 120.0  # measured training time, shared by the bidirectional and causal model
    corpus: str | None = None
    peak_tflops: float | None = None  # bf16 dense peak; None: looked up from the GPU's name
    seed: int = 0
    tests: CheckShapes = CheckShapes()
    bench: BenchShapes = BenchShapes()
    train: TrainShapes = TrainShapes()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        values = dict(values)
        values["tests"] = CheckShapes(**values["tests"])
        bench = dict(values["bench"])
        bench["lengths"], bench["kernels"] = tuple(bench["lengths"]), tuple(bench["kernels"])
        values["bench"] = BenchShapes(**bench)
        values["train"] = TrainShapes(**values["train"])
        return cls(**values)


DRY_RUN = Settings(
    dry_run=True,
    device="cpu",
    budget_s=300.0,  # an upper bound: ~15 s on an idle CPU, more on a busy one
    train_s=4.0,
    tests=CheckShapes(
        batch=2,
        heads=2,
        length=40,
        dim=16,
        features=24,
        padded=7,
        decode_length=12,
        model_decode_length=10,
    ),
    bench=BenchShapes(
        lengths=(64, 128), heads=2, dim=16, features=16, warmup=1, repeats=2, case_budget_s=0.5
    ),
    train=TrainShapes(
        model={
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "d_ff": 64,
            "nb_features": 16,
            "max_len": 64,
            "positional": "learned",
            "lm_head": "linear",
            "attention": "favor_relu",
            "redraw_interval": 1000,
        },
        length=64,
        batch=4,
        lr=3e-3,
        warmup_steps=1,  # a few steps in all: the loss must fall from the first ones
        eval_batches=2,
        loss_window=5,
        max_residues=400_000,
    ),
)


def settings_for(dry_run: bool, **overrides) -> Settings:
    """The full or the dry-run settings with the given top-level fields replaced."""
    base = DRY_RUN if dry_run else Settings()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})

"""What bf16 and TF32 do to a trained Performer, emulated on CPU: attention outputs and MLM loss.

The shipped ``swissprot-performer-bid`` (FAVOR+ ReLU, 4 layers, 8 heads of 16, m=64) reads
the 8 proteins of ≥ 1,022 residues in data/far_proteins_486k.fasta.gz (far from its training
set), cropped to L=1024 tokens, 15% of positions masked (seeded). Each variant changes one
thing against the float32 forward:
- TF32: a matmul's float32 inputs rounded to TF32's 10-bit mantissa (round to nearest even),
  products accumulated in float32, as tensor cores do with ``allow_tf32``; in every matmul
  of the model, or only in the FAVOR+ contractions.
- bf16 q/k/v: the q, k, v projections in bfloat16 (inputs, weights, output) and rotary in
  bfloat16, as under autocast; attention itself float32, as favor_attention computes it.
- bf16 autocast: the whole forward under ``torch.autocast("cpu", torch.bfloat16)``
  (bf16-mixed); FAVOR+ features, sums and normaliser stay float32 (favor_attention turns
  autocast off).
- bf16 attention internals (a control, not a policy): every float32 result inside
  favor_attention stored as bfloat16, i.e. features, context and normaliser in bf16.
Reported: the relative error ‖y − y₃₂‖/‖y₃₂‖ of each layer's attention output (worst layer),
of the logits, the masked-LM loss and its change, and the share of masked positions whose
top-1 prediction changes. The same variants also run with the layers switched to the
softmax kernel (FAVOR+ positive features, whose exp is the precision-sensitive part) on the
same trained q, k, v: there only the errors mean something, not the loss.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from proteinperf.attention import dispatch
from proteinperf.benchmarks._measure import machine_info, markdown_table

ROOT = Path(__file__).resolve().parents[2]
FASTA = ROOT / "data" / "far_proteins_486k.fasta.gz"
MODEL = "swissprot-performer-bid"

aten = torch.ops.aten
# matmul ops and the positions of the operands TF32 rounds (the added input stays float32)
_MATMULS = {
    aten.mm.default: (0, 1),
    aten.mm.out: (0, 1),
    aten.bmm.default: (0, 1),
    aten.bmm.out: (0, 1),
    aten.addmm.default: (1, 2),
    aten.addmm_.default: (1, 2),
    aten.baddbmm.default: (1, 2),
    aten.baddbmm_.default: (1, 2),
}


@dataclass(frozen=True)
class Settings:
    length: int = 1024
    proteins: int = 8
    mask_prob: float = 0.15
    seed: int = 0


FULL = Settings()
QUICK = Settings(length=128, proteins=2)


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32 (10 mantissa bits), round to nearest even; finite inputs."""
    bits = x.contiguous().view(torch.int32)
    odd = (bits >> 13) & 1
    return ((bits + 0xFFF + odd) & -0x2000).view(torch.float32)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


class TF32Matmuls(TorchDispatchMode):
    """Every float32 matmul under this mode rounds its operands to TF32 first."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = _MATMULS.get(func)
        if operands is not None:
            args = list(args)
            for i in operands:
                if args[i].dtype == torch.float32:
                    args[i] = round_tf32(args[i])
        return func(*args, **kwargs)


class BF16Results(TorchDispatchMode):
    """Every float32 result under this mode is stored as bfloat16 (then read as float32)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            if torch._debug_has_internal_overlap(out) == 0:  # not an expanded view
                with torch.no_grad():
                    out.copy_(round_bf16(out))
        return out


@contextlib.contextmanager
def _attention_under(mode_factory):
    """Run every favor_attention call of the model (made by ``attention.attend``) under a
    fresh dispatch mode."""
    original = dispatch.favor_attention

    def wrapped(*args, **kwargs):
        with mode_factory():
            return original(*args, **kwargs)

    dispatch.favor_attention = wrapped
    try:
        yield
    finally:
        dispatch.favor_attention = original


@contextlib.contextmanager
def _bf16_qkv(model):
    """q/k/v projections in bfloat16 (hence rotary too); out_proj reads float32 again."""

    def bf16_linear(module, inputs, output):
        x = inputs[0].to(torch.bfloat16)
        bias = None if module.bias is None else module.bias.to(torch.bfloat16)
        return F.linear(x, module.weight.to(torch.bfloat16), bias)

    handles = []
    for layer in model.attention_layers:
        for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
            handles.append(proj.register_forward_hook(bf16_linear))
        handles.append(
            layer.out_proj.register_forward_pre_hook(lambda m, inputs: (inputs[0].float(),))
        )
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _variants(model):
    """name -> context manager factory; the float32 reference first."""
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    tf32_attention = lambda: _attention_under(TF32Matmuls)  # noqa: E731

    @contextlib.contextmanager
    def both(*factories):
        with contextlib.ExitStack() as stack:
            for f in factories:
                stack.enter_context(f())
            yield

    return {
        "float32": contextlib.nullcontext,
        "TF32 in every matmul": TF32Matmuls,
        "TF32 in the attention contractions": tf32_attention,
        "bf16 q/k/v (projections, rotary)": lambda: _bf16_qkv(model),
        "bf16 q/k/v + TF32 attention": lambda: both(lambda: _bf16_qkv(model), tf32_attention),
        "bf16 autocast (bf16-mixed)": autocast,
        "bf16 autocast + TF32 attention": lambda: both(autocast, tf32_attention),
        "bf16 attention internals (control)": lambda: _attention_under(BF16Results),
    }


def load_batch(settings: Settings):
    """(masked tokens, padding mask, targets) of the long proteins, cropped to the length."""
    from proteinperf.data.alphabet import get_alphabet
    from proteinperf.data.fasta import read_fasta
    from proteinperf.data.sampling import IGNORE
    from proteinperf.inference.common import encode_batch

    residues = settings.length - 2
    sequences = []
    for record in read_fasta(FASTA):
        if len(record.sequence) >= residues:
            sequences.append(record.sequence[:residues])
        if len(sequences) == settings.proteins:
            break
    tokens, mask = encode_batch(sequences, torch.device("cpu"))
    g = torch.Generator().manual_seed(settings.seed)
    chosen = (torch.rand(tokens.shape, generator=g) < settings.mask_prob) & mask
    chosen[:, 0] = chosen[:, -1] = False  # <cls>, <eos>
    targets = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    tokens = tokens.masked_fill(chosen, get_alphabet().mask_idx)
    return tokens, mask, targets, sequences


@torch.no_grad()
def _forward(model, tokens, mask, targets):
    outputs = []
    hooks = [
        layer.out_proj.register_forward_pre_hook(
            lambda m, inputs: outputs.append(inputs[0].float().clone())
        )
        for layer in model.attention_layers
    ]
    try:
        logits = model(tokens, mask)["logits"].float()
    finally:
        for h in hooks:
            h.remove()
    from proteinperf.data.sampling import IGNORE

    per_target = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
    )[targets.flatten() != IGNORE]
    return outputs, logits, per_target


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(model, tokens, mask, targets) -> list[dict]:
    rows, ref = [], None
    selected = targets >= 0
    for name, variant in _variants(model).items():
        with variant():
            attn, logits, per_target = _forward(model, tokens, mask, targets)
        loss = float(per_target.mean())
        if ref is None:
            ref = attn, logits, loss
        errors = [_relative(a, r) for a, r in zip(attn, ref[0])]
        flips = logits.argmax(-1)[selected] != ref[1].argmax(-1)[selected]
        rows.append(
            {
                "variant": name,
                "attention_rel_error_per_layer": errors,
                "attention_rel_error_max": max(errors),
                "logits_rel_error": _relative(logits, ref[1]),
                "loss": loss,
                "loss_delta": loss - ref[2],
                "top1_changed": float(flips.float().mean()),
                "loss_standard_error": float(per_target.std() / per_target.numel() ** 0.5),
            }
        )
    return rows


def _table(rows: list[dict], with_loss: bool) -> str:
    headers = ["variant", "attention rel. error (worst layer)", "logits rel. error"]
    if with_loss:
        headers += ["MLM loss", "Δ loss", "top-1 changed"]
    body = []
    for r in rows:
        row = [r["variant"], f"{r['attention_rel_error_max']:.2e}", f"{r['logits_rel_error']:.2e}"]
        if with_loss:
            row += [
                f"{r['loss']:.5f}",
                f"{r['loss_delta']:+.1e}",
                f"{100 * r['top1_changed']:.2f}%",
            ]
        body.append(row)
    return markdown_table(headers, body)


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    from proteinperf import load_model

    s = settings or (QUICK if quick else FULL)
    torch.manual_seed(s.seed)
    model, _ = load_model(MODEL)
    model = model.float().eval()
    tokens, mask, targets, sequences = load_batch(s)
    relu = measure(model, tokens, mask, targets)
    for layer in model.attention_layers:
        layer.kernel = "softmax"
    softmax = measure(model, tokens, mask, targets)
    n_targets = int((targets >= 0).sum())
    worst = {
        "TF32": max(abs(r["loss_delta"]) for r in relu if "bf16" not in r["variant"]),
        "bf16": max(abs(r["loss_delta"]) for r in relu if "bf16" in r["variant"]),
    }
    markdown = "\n".join(
        [
            "# Precision policy: bf16 and TF32 on a trained Performer, emulated on CPU",
            "",
            f"`{MODEL}` on {len(sequences)} proteins of data/far_proteins_486k.fasta.gz cropped "
            f"to L={s.length} tokens, {n_targets} masked positions (15%, seed {s.seed}). "
            "TF32 is emulated by rounding float32 matmul operands to 10 mantissa bits; bf16 by "
            "casting. Relative errors against the float32 forward.",
            "",
            "## The trained model (FAVOR+ ReLU kernel)",
            "",
            _table(relu, with_loss=True),
            "",
            f"Largest loss change: {worst['TF32']:.1e} with TF32 alone, {worst['bf16']:.1e} "
            f"with bf16 (with or without TF32), against a standard error of "
            f"{relu[0]['loss_standard_error']:.1e} of the loss itself over these {n_targets} "
            "positions.",
            "",
            "## The same q, k, v with the softmax kernel (FAVOR+ positive features)",
            "",
            "Not what the model was trained with: errors only.",
            "",
            _table(softmax, with_loss=False),
        ]
    )
    return {
        "settings": asdict(s),
        "machine": machine_info(),
        "proteins": len(sequences),
        "masked_positions": n_targets,
        "relu": relu,
        "softmax": softmax,
        "markdown": markdown,
    }

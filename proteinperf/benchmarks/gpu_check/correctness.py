"""Section ``tests``: every attention kernel and direction on the device against float64.

Each case draws q, k, v and the output gradient as bf16-representable numbers, so fp32 and bf16
runs see the same values and share one reference: ``naive_attention`` (FAVOR kernels) or
``softmax_attention`` (exact) in float64 on the CPU, independent of the device under test.
Outputs and the gradients of q, k and v are compared by relative Frobenius error against
``settings.TOLERANCES``, with and without key padding, over a length that spans several causal
chunks and ends in a ragged one. Decoding: one token at a time through the recurrent state
(``recurrent.favor_step``) and through ``PerformerLM.step`` against the full causal forward.
Attention is called only through the public functions of ``proteinperf.attention``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict

import torch

from proteinperf.attention import (
    KERNELS,
    check_kernel_for_causal,
    draw_features,
    favor_attention,
    naive_attention,
    recurrent,
    softmax_attention,
)

from .settings import TOLERANCES, TRIG_TOLERANCES

EXACT = "exact"  # softmax attention (SDPA), beside the FAVOR kernels of KERNELS
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODEL_ATTENTIONS = ("favor_relu", "favor_softmax", "softmax")


def tolerance(kernel: str, dtype: str) -> float:
    return (TRIG_TOLERANCES if kernel == "trig" else TOLERANCES)[dtype]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖_F / ‖reference‖_F in float64 (inf where value is not finite)."""
    value = value.detach().to("cpu", torch.float64)
    if not torch.isfinite(value).all():
        return float("inf")
    return float((value - reference).norm() / reference.norm().clamp_min(1e-300))


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls in full precision (no TF32) while the fp32 cases run."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _attention(kernel, q, k, v, features, causal, mask):
    if kernel == EXACT:
        return softmax_attention(q, k, v, causal=causal, key_padding_mask=mask)
    return favor_attention(q, k, v, features, causal=causal, kernel=kernel, key_padding_mask=mask)


def _reference(kernel, inputs, features, causal, mask):
    """Output and gradients of q, k, v in float64 on the CPU."""
    q, k, v, grad = (t.double().requires_grad_(t is not inputs[3]) for t in inputs)
    if kernel == EXACT:
        out = softmax_attention(q, k, v, causal=causal, key_padding_mask=mask)
    else:
        out = naive_attention(
            q, k, v, features.double(), causal=causal, kernel=kernel, key_padding_mask=mask
        )
    out.backward(grad)
    return [t.detach() for t in (out, q.grad, k.grad, v.grad)]


def _on_device(kernel, inputs, features, causal, mask, dtype, device):
    # copy: on the CPU .to() would otherwise hand back (and mark) the shared inputs themselves
    q, k, v = (t.to(device, dtype, copy=True).requires_grad_() for t in inputs[:3])
    mask = None if mask is None else mask.to(device)
    out = _attention(kernel, q, k, v, features.to(device), causal, mask)
    out.backward(inputs[3].to(device, dtype))
    return [out, q.grad, k.grad, v.grad], out.dtype


def _inputs(s, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (s.batch, s.heads, s.length, s.dim)
    # Rounded to bf16 once: exactly representable in both dtypes under test.
    return [torch.randn(shape, generator=g).bfloat16().float() for _ in range(4)]


def _cases():
    for kernel in (*KERNELS, EXACT):
        for causal in (False, True):
            if causal and kernel != EXACT:
                try:
                    check_kernel_for_causal(kernel)
                except ValueError:
                    continue  # a kernel that would see the future (softmax_opt)
            for padded in (False, True):
                yield kernel, causal, padded


def _out_of_time(deadline: float, result: dict, record, what: str) -> bool:
    if time.time() < deadline:
        return False
    result["skipped"].append(what)
    record(result)
    return True


def _kernel_cases(settings, device, deadline, result, record):
    s = settings.tests
    features = draw_features(s.features, s.dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(s.batch, s.length, dtype=torch.bool)
    mask[-1, s.length - s.padded :] = False
    for n, (kernel, causal, padded) in enumerate(_cases()):
        if _out_of_time(deadline, result, record, f"{kernel} causal={causal} padded={padded}"):
            continue
        inputs = _inputs(s, settings.seed + n)
        case_mask = mask if padded else None
        reference = _reference(kernel, inputs, features, causal, case_mask)
        for dtype_name, dtype in DTYPES.items():
            case = {
                "kernel": kernel,
                "causal": causal,
                "padded": padded,
                "dtype": dtype_name,
                "tolerance": tolerance(kernel, dtype_name),
            }
            try:
                with full_fp32():
                    values, out_dtype = _on_device(
                        kernel, inputs, features, causal, case_mask, dtype, device
                    )
                errors = dict(
                    zip(("out", "dq", "dk", "dv"), map(relative_error, values, reference))
                )
                case["errors"] = errors
                case["out_dtype"] = str(out_dtype).removeprefix("torch.")
                case["passed"] = max(errors.values()) <= case["tolerance"] and out_dtype == dtype
            except Exception as exc:  # recorded; the other cases still run
                case["passed"], case["error"] = False, f"{type(exc).__name__}: {exc}"[:500]
            result["cases"].append(case)
            record(result)


def _decode_attention(settings, device, deadline, result, record):
    """recurrent.favor_step one token at a time against favor_attention(causal=True)."""
    s = settings.tests
    shape = (s.batch, s.heads, s.decode_length, s.dim)
    g = torch.Generator().manual_seed(settings.seed + 1000)
    q, k, v = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    features = draw_features(s.features, s.dim, generator=g).to(device)
    mask = torch.ones(s.batch, s.decode_length, dtype=torch.bool, device=device)
    mask[-1, s.decode_length // 2 :: 3] = False  # padding scattered through the prompt
    for kernel in KERNELS:
        case = {"level": "attention", "kernel": kernel, "length": s.decode_length}
        case["tolerance"] = tolerance(kernel, "float32")
        try:
            check_kernel_for_causal(kernel)
        except ValueError:
            continue
        if _out_of_time(deadline, result, record, f"decoding {kernel}"):
            continue
        try:
            with torch.no_grad(), full_fp32():
                full = favor_attention(
                    q, k, v, features, causal=True, kernel=kernel, key_padding_mask=mask
                )
                state = recurrent.init_state(s.batch, s.heads, s.features, s.dim, device=device)
                outs = []
                for i in range(s.decode_length):
                    at = slice(i, i + 1)
                    out, state = recurrent.favor_step(
                        state,
                        q[:, :, at],
                        k[:, :, at],
                        v[:, :, at],
                        features,
                        kernel=kernel,
                        key_padding_mask=mask[:, at],
                    )
                    outs.append(out)
            case["error"] = relative_error(torch.cat(outs, 2), full.double().cpu())
            case["passed"] = case["error"] <= case["tolerance"]
        except Exception as exc:
            case["passed"], case["failure"] = False, f"{type(exc).__name__}: {exc}"[:500]
        result["decoding"].append(case)
        record(result)


def _decode_model(settings, device, deadline, result, record):
    """PerformerLM.step one token at a time (the fused decoding path) against forward."""
    from proteinperf.model import ModelConfig, PerformerLM

    s = settings.tests
    # Ordinary tokens: above <cls>, <pad>, <eos> and below <mask> (the data package, whose
    # alphabet names the residues, needs pyarrow; this section needs torch alone).
    ids = ModelConfig()
    g = torch.Generator().manual_seed(settings.seed + 2000)
    shape = (s.batch, s.model_decode_length)
    tokens = torch.randint(ids.eos_idx + 1, ids.mask_idx, shape, generator=g).to(device)
    for attention in MODEL_ATTENTIONS:
        case = {"level": "model", "attention": attention, "length": s.model_decode_length}
        case["tolerance"] = TOLERANCES["float32"]
        if _out_of_time(deadline, result, record, f"model decoding {attention}"):
            continue
        try:
            torch.manual_seed(settings.seed)
            config = ModelConfig(
                d_model=s.heads * s.dim,
                n_layers=2,
                n_heads=s.heads,
                d_ff=2 * s.heads * s.dim,
                nb_features=s.features,
                attention=attention,
                causal=True,
                dropout=0.0,
            )
            model = PerformerLM(config).to(device).eval()
            with torch.inference_mode(), full_fp32():
                full = model(tokens)["logits"]
                state, steps = None, []
                for i in range(tokens.shape[1]):
                    logits, state = model.step(tokens[:, i : i + 1], state)
                    steps.append(logits)
            case["error"] = relative_error(torch.cat(steps, 1), full.double().cpu())
            case["passed"] = case["error"] <= case["tolerance"]
        except Exception as exc:
            case["passed"], case["failure"] = False, f"{type(exc).__name__}: {exc}"[:500]
        result["decoding"].append(case)
        record(result)


def run(settings, deadline: float, record) -> dict:
    device = torch.device(settings.device)
    result = {
        "shapes": asdict(settings.tests),
        "reference": "float64 on the CPU: naive_attention (FAVOR), softmax_attention (exact)",
        "metric": "relative Frobenius error of outputs and of the gradients of q, k, v",
        "tolerances": TOLERANCES,
        "trig_tolerances": TRIG_TOLERANCES,
        "cases": [],
        "decoding": [],
        "skipped": [],  # checks the time box left no room for
    }
    for part in (_kernel_cases, _decode_attention, _decode_model):
        part(settings, device, deadline, result, record)
    checks = result["cases"] + result["decoding"]
    result["passed"] = sum(c["passed"] for c in checks)
    result["failed"] = len(checks) - result["passed"]
    return result

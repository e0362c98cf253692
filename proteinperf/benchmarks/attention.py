"""Attention benchmarks: speed and peak memory, approximation quality, targets.

Speed: FAVOR+ (ours) against exact SDPA and performer-pytorch's ``FastAttention``, batch 1,
8 heads, d=64, m=256, float32, 2 threads, every case in a fresh worker process
(``_measure.run_case``). A case predicted (from the smaller lengths of its series) to exceed the
memory limit or the per-step time cap is reported as skipped instead of run.

Quality: relative Frobenius error of each estimator against exact float64 attention. q and k
have iid N(0, σ²) entries with σ = √s, so that the logits q·k/√d have standard deviation s
(Var(q·k) = d·σ⁴); v ~ N(0, 1). "m" is the number of features (rows of W drawn); the trig and
hyperbolic maps of proteinperf.attention build them from m/2 directions (sin/cos, exp(±ω·x)).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from proteinperf.benchmarks._measure import machine_info, markdown_table, run_case

IMPLS = ("favor", "sdpa", "performer_pytorch")
LABELS = {"favor": "ours", "sdpa": "SDPA", "performer_pytorch": "performer-pytorch"}
KERNELS = ("softmax", "softmax_hyp", "softmax_opt", "trig")
GIB = 2**30
PP = "performer_pytorch"
TIME, MEM = "median_s", "peak_mib"  # keys of a measured case


@dataclass(frozen=True)
class Settings:
    lengths: tuple[int, ...] = (1024, 4096, 16384, 32768)
    impls: tuple[str, ...] = IMPLS
    heads: int = 8
    dim: int = 64
    features: int = 256
    repeats: int = 5
    case_budget_s: float = 25.0  # timed repeats of one case stop once this much time is spent
    step_cap_s: float = 120.0  # a case predicted to need longer for one step is skipped
    total_budget_s: float = 18 * 60  # speed cases predicted to overrun this are skipped
    mem_limit_gib: float = 20.0  # address-space cap of a worker; larger predictions are skipped
    quiet_wait_s: float = 0.0  # before each case, wait up to this long for an idle machine
    # Workers run at this priority where permitted: on a shared machine, other processes on
    # the two cores otherwise stall torch's threads at every op and timings mean little.
    worker_nice: int | None = -20
    quality_length: int = 1024
    quality_heads: int = 8
    quality_ms: tuple[int, ...] = (16, 64, 256, 1024)
    logit_stds: tuple[float, ...] = (1.0, 0.5, 0.25)
    seeds: int = 5


FULL = Settings()
QUICK = Settings(
    lengths=(512, 2048),
    repeats=2,
    case_budget_s=4.0,
    step_cap_s=20.0,
    total_budget_s=75.0,
    quality_length=256,
    quality_ms=(16, 64, 256),
    seeds=2,
)


def code_version() -> dict[str, Any]:
    """Which proteinperf.attention was measured: git commit, and a hash of its sources as read."""
    import hashlib
    import subprocess

    src = Path(__file__).resolve().parents[1] / "attention"
    digest = hashlib.sha256()
    for path in sorted(src.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    git = ["git", "-C", str(src)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True, text=True)
        head, changed = commit.stdout.strip() or None, bool(dirty.stdout.strip())
    except OSError:
        head, changed = None, None
    return {
        "commit": head,
        "attention_uncommitted": changed,
        "attention_sha256": digest.hexdigest(),
    }


def ours_unavailable() -> str | None:
    """Why proteinperf.attention cannot be benchmarked, or None when it can."""
    try:
        from proteinperf.attention import draw_features, favor_attention  # noqa: F401
    except ImportError as exc:
        return f"proteinperf.attention not importable ({exc})"
    return None


def _performer_pytorch(dim: int, features: int, causal: bool) -> torch.nn.Module:
    from performer_pytorch import FastAttention

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning on the causal CPU path
        return FastAttention(dim_heads=dim, nb_features=features, causal=causal)


def _attention(impl: str, causal: bool, dim: int, features: int) -> Callable[..., torch.Tensor]:
    if impl == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == "performer_pytorch":
        return _performer_pytorch(dim, features, causal)
    from proteinperf.attention import draw_features, favor_attention

    w = draw_features(features, dim, orthogonal=True, generator=torch.Generator().manual_seed(0))
    return lambda q, k, v: favor_attention(q, k, v, w, causal=causal)


def build_case(
    impl: str, length: int, causal: bool, backward: bool, heads: int, dim: int, features: int
):
    """Worker target of ``_measure.run_case``: (prepare, step) for one attention configuration."""
    attend = _attention(impl, causal, dim, features)

    def prepare(size: tuple[int, ...] = (1, heads, length, dim)) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        q, k, v, grad = (torch.randn(size, generator=g) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_(backward)
        return q, k, v, grad

    def step(inputs: tuple[torch.Tensor, ...]) -> None:
        q, k, v, grad = inputs
        if backward:
            attend(q, k, v).backward(grad)
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                attend(q, k, v)

    step(prepare((1, heads, 64, dim)))  # one-off library set-up belongs to the baseline
    return prepare, step


# ----------------------------------------------------------------------------- speed, memory


def _power_law(points: list[tuple[int, float]], length: int, default_power: float) -> float:
    """Extrapolate measured (length, value) points to ``length``, exponent clamped to [1, 2]."""
    (l1, y1) = points[-1]
    power = default_power
    if len(points) >= 2 and points[-2][1] > 0 and y1 > 0:
        (l0, y0) = points[-2]
        power = min(max(math.log(y1 / y0) / math.log(l1 / l0), 1.0), 2.0)
    return y1 * (length / l1) ** power


def _skip_reason(history: list[dict], length: int, impl: str, s: Settings, left_s: float):
    """Why a case should not be run, judged from the smaller lengths of its series."""
    if history and history[-1]["status"] != "ok":
        status = history[-1]["status"].replace("skipped", "not run")
        return f"skipped: {status} at L={history[-1]['length']}"
    if not history:
        return None
    quadratic = 2.0 if impl == "sdpa" else 1.0
    mem = _power_law([(h["length"], h["peak_mib"]) for h in history], length, quadratic) / 1024
    step = _power_law([(h["length"], h["median_s"]) for h in history], length, quadratic)
    if mem > s.mem_limit_gib:
        return f"skipped: predicted peak {mem:.0f} GiB > {s.mem_limit_gib:.0f} GiB"
    if step > s.step_cap_s:
        return f"skipped: predicted {step:.0f} s per step > {s.step_cap_s:.0f} s cap"
    if 2 * step + 5 > left_s:
        return "skipped: benchmark time budget spent"
    return None


def _speed(s: Settings) -> list[dict]:
    unavailable = {
        "favor": ours_unavailable(),
        "sdpa": None,
        PP: None if _importable(PP) else "performer-pytorch not installed (the bench extra)",
    }
    deadline = time.monotonic() + s.total_budget_s
    results = []
    for backward in (True, False):
        for causal in (False, True):
            for impl in s.impls:
                history: list[dict] = []
                for length in s.lengths:
                    case = {"impl": impl, "causal": causal, "backward": backward, "length": length}
                    left = deadline - time.monotonic()
                    reason = unavailable[impl] or _skip_reason(history, length, impl, s, left)
                    if reason:
                        outcome = {"status": "skipped", "reason": reason}
                    else:
                        outcome = _run_one(case, s, left)
                    history.append({**case, **outcome})
                    print(_progress_line(history[-1]), flush=True)
                results += history
    return results


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _run_one(case: dict, s: Settings, left_s: float) -> dict:
    kwargs = {**case, "heads": s.heads, "dim": s.dim, "features": s.features}
    return run_case(
        f"{__name__}:build_case",
        kwargs,
        repeats=s.repeats,
        budget_s=s.case_budget_s,
        timeout_s=max(min(left_s, 3 * s.step_cap_s + s.case_budget_s), 30.0),
        mem_limit_bytes=int(s.mem_limit_gib * GIB),
        quiet_wait_s=s.quiet_wait_s,
        nice=s.worker_nice,
    )


def _progress_line(r: dict) -> str:
    head = f"  {LABELS[r['impl']]:>17} {_direction(r):>13} {_pass(r):>7} L={r['length']:<6}"
    if r["status"] != "ok":
        return f"{head} {r.get('reason', r['status'])}"
    return f"{head} {r['median_s']:8.3f} s  {r['peak_mib']:8.0f} MiB"


def _direction(r: dict) -> str:
    return "causal" if r["causal"] else "bidirectional"


def _pass(r: dict) -> str:
    return "fwd+bwd" if r["backward"] else "fwd"


def _find(speed: list[dict], impl: str, causal: bool, backward: bool, length: int) -> dict:
    for r in speed:
        if (r["impl"], r["causal"], r["backward"], r["length"]) == (impl, causal, backward, length):
            return r
    return {"status": "not run", "reason": "not run"}


def _value(r: dict, key: str) -> float | None:
    return r.get(key) if r["status"] == "ok" else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _speed_table(speed: list[dict], s: Settings) -> str:
    headers = ["attention", "pass", "L"]
    headers += [f"{LABELS[i]} s" for i in IMPLS] + [f"{LABELS[i]} MiB" for i in IMPLS]
    headers += ["SDPA / ours time", "perf.-pt / ours time", "ours / perf.-pt memory"]
    rows = []
    for backward in (True, False):
        for causal in (False, True):
            for length in s.lengths:
                cases = {i: _find(speed, i, causal, backward, length) for i in IMPLS}
                ours, sdpa, pp = (cases[i] for i in IMPLS)
                row = [_direction(ours), _pass(ours), length]
                row += [_fmt(_value(c, TIME), c, "{:.3g}") + _busy_mark(c) for c in cases.values()]
                row += [_fmt(_value(c, MEM), c, "{:.0f}", quiet=True) for c in cases.values()]
                t_ours = _value(ours, TIME)
                row += [
                    _fmt(_ratio(_value(sdpa, TIME), t_ours), None, "{:.1f}x"),
                    _fmt(_ratio(_value(pp, TIME), t_ours), None, "{:.1f}x"),
                    _fmt(_ratio(_value(ours, MEM), _value(pp, MEM)), None, "{:.2f}x"),
                ]
                rows.append(row)
    return markdown_table(headers, rows)


BUSY = 0.3  # CPUs kept busy by other processes during a case: above this its time is flagged


def _busy_mark(case: dict) -> str:
    busy = case.get("other_cpus")
    return "†" if case["status"] == "ok" and busy is not None and busy >= BUSY else ""


def _fmt(x: float | None, case: dict | None, spec: str, quiet: bool = False) -> str:
    if x is not None:
        return spec.format(x)
    if case is None or quiet:
        return "—"
    return case.get("reason", case["status"]).replace("|", "/")


# ----------------------------------------------------------------------------- quality


def _qkv(seed: int, s: Settings, logit_std: float) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, s.quality_heads, s.quality_length, s.dim)
    sigma = math.sqrt(logit_std)  # std(q·k/√d) = σ² for iid N(0, σ²) entries
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    return q * sigma, k * sigma, v


def exact_attention_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v in float64, independent of the code under test."""
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def _estimators() -> dict[str, Callable[..., torch.Tensor]]:
    """name -> f(q, k, v, m, seed): every approximation compared in the quality table."""
    found: dict[str, Callable[..., torch.Tensor]] = {
        "uniform": lambda q, k, v, m, seed: v.mean(dim=-2, keepdim=True).expand_as(v)
    }
    if _importable("performer_pytorch"):

        def performer_pytorch(q, k, v, m, seed):
            torch.manual_seed(10_000 + seed)  # FastAttention draws its features from the global RNG
            return _performer_pytorch(q.shape[-1], m, causal=False)(q, k, v)

        found["performer_pytorch"] = performer_pytorch
    if ours_unavailable() is None:
        for kernel in KERNELS:
            for features in ("orthogonal", "iid"):
                found[f"{kernel}/{features}"] = _favor(kernel, features == "orthogonal")
    return found


def _favor(kernel: str, orthogonal: bool) -> Callable[..., torch.Tensor]:
    from proteinperf.attention import draw_features, favor_attention

    def estimate(q, k, v, m, seed):
        g = torch.Generator().manual_seed(10_000 + seed)
        w = draw_features(m, q.shape[-1], orthogonal=orthogonal, generator=g)
        return favor_attention(q, k, v, w, kernel=kernel)

    return estimate


@torch.no_grad()
def _quality(s: Settings) -> list[dict]:
    estimators = _estimators()
    errors: dict[tuple[str, float, int | None], list[float]] = defaultdict(list)
    for logit_std in s.logit_stds:
        for seed in range(s.seeds):
            q, k, v = _qkv(seed, s, logit_std)
            ref = exact_attention_f64(q, k, v)
            for name, estimate in estimators.items():
                for m in [None] if name == "uniform" else s.quality_ms:
                    err = relative_error(estimate(q, k, v, m, seed), ref)
                    errors[(name, logit_std, m)].append(err)
    return [
        {
            "estimator": name,
            "logit_std": logit_std,
            "m": m,
            "errors": errs,
            "mean": statistics.fmean(errs),
            "std": statistics.pstdev(errs),
        }
        for (name, logit_std, m), errs in errors.items()
    ]


def _error(quality: list[dict], name: str, logit_std: float, m: int | None) -> float | None:
    for r in quality:
        if (r["estimator"], r["logit_std"], r["m"]) == (name, logit_std, m):
            return r["mean"]
    return None


QUALITY_COLUMNS = {
    "uniform": "uniform (mean of v)",
    "performer_pytorch": "performer-pytorch",
    "softmax/orthogonal": "softmax",
    "softmax/iid": "softmax (iid)",
    "softmax_hyp/orthogonal": "softmax_hyp",
    "softmax_opt/orthogonal": "softmax_opt",
    "trig/orthogonal": "trig",
}


def _quality_table(quality: list[dict], s: Settings) -> str:
    headers = ["logit std s", "m", *QUALITY_COLUMNS.values()]
    rows = []
    for logit_std in s.logit_stds:
        for m in s.quality_ms:
            cells = []
            for name in QUALITY_COLUMNS:
                err = _error(quality, name, logit_std, None if name == "uniform" else m)
                cells.append("—" if err is None else f"{err:.3f}")
            rows.append([logit_std, m, *cells])
    return markdown_table(headers, rows)


# ----------------------------------------------------------------------------- targets


def _target(name: str, value: Any, op: str, threshold: Any) -> dict:
    if value is None:
        passed = None
    elif op == "<=":
        passed = value <= threshold
    elif op == "<":
        passed = value < threshold
    elif op == ">=":
        passed = value >= threshold
    else:
        passed = value == threshold
    return {"name": name, "value": value, "op": op, "threshold": threshold, "pass": passed}


# name, measured key, numerator impl, denominator impl, causal, L, op, threshold (fwd+bwd cases)
SPEED_TARGETS = [
    ("speedup_vs_sdpa_bid_fwdbwd_16384", TIME, "sdpa", "favor", False, 16384, ">=", 10),
    ("speedup_vs_performer_pytorch_bid_fwdbwd_16384", TIME, PP, "favor", False, 16384, ">=", 1.5),
    ("memory_vs_performer_pytorch_bid_fwdbwd_16384", MEM, "favor", PP, False, 16384, "<=", 0.65),
    ("speedup_vs_sdpa_causal_fwdbwd_16384", TIME, "sdpa", "favor", True, 16384, ">=", 2.5),
    ("speedup_vs_sdpa_causal_fwdbwd_32768", TIME, "sdpa", "favor", True, 32768, ">=", 4.5),
    ("speedup_vs_performer_pytorch_causal_fwdbwd_4096", TIME, PP, "favor", True, 4096, ">=", 10),
    ("memory_vs_performer_pytorch_causal_fwdbwd_4096", MEM, "favor", PP, True, 4096, "<=", 0.1),
]


def _targets(speed: list[dict], quality: list[dict], s: Settings) -> list[dict]:
    def measured(key: str, impl: str, causal: bool, length: int) -> float | None:
        return _value(_find(speed, impl, causal, True, length), key)

    found = []
    for name, key, num, den, causal, length, op, threshold in SPEED_TARGETS:
        ratio = _ratio(measured(key, num, causal, length), measured(key, den, causal, length))
        found.append(_target(name, ratio, op, threshold))
    for length in s.lengths:
        t_causal = measured("median_s", "favor", True, length)
        ratio = _ratio(t_causal, measured("median_s", "favor", False, length))
        found.append(_target(f"causal_over_bid_time_fwdbwd_{length}", ratio, "<=", 2))
    growth = _ratio(
        measured("peak_mib", "favor", True, 32768), measured("peak_mib", "favor", True, 16384)
    )
    found.append(_target("memory_growth_causal_fwdbwd_16384_to_32768", growth, "<=", 2.3))
    return found + _quality_targets(quality, s)


def _quality_targets(quality: list[dict], s: Settings) -> list[dict]:
    found = []
    for logit_std in s.logit_stds:
        errs = [_error(quality, "softmax/orthogonal", logit_std, m) for m in s.quality_ms]
        falls = None if None in errs else all(a > b for a, b in zip(errs, errs[1:]))
        found.append(_target(f"softmax_error_falls_with_m_s{logit_std}", falls, "==", True))
    err = _error(quality, "softmax/orthogonal", 0.25, 1024)
    opt = _error(quality, "softmax_opt/orthogonal", 0.25, 1024)
    ratio = _ratio(
        _error(quality, "softmax_opt/orthogonal", 0.5, 1024),
        _error(quality, "softmax/orthogonal", 0.5, 1024),
    )
    return found + [
        _target("error_softmax_s0.25_m1024", err, "<", 0.28),
        _target("error_softmax_opt_s0.25_m1024", opt, "<", 0.205),
        _target("error_softmax_opt_over_softmax_s0.5_m1024", ratio, "<=", 0.8),
    ]


def _targets_table(targets: list[dict]) -> str:
    rows = []
    for t in targets:
        value = t["value"]
        shown = "not measured" if value is None else value
        if isinstance(value, float):
            shown = f"{value:.3g}"
        verdict = {True: "pass", False: "**MISS**", None: "n/a"}[t["pass"]]
        rows.append([t["name"], shown, f"{t['op']} {t['threshold']}", verdict])
    return markdown_table(["target", "measured", "required", "result"], rows)


# ----------------------------------------------------------------------------- plots


def _plot_quality(quality: list[dict], s: Settings, path: Path) -> Path:
    """Error against m per logit std, in the style of the paper's Fig. 4 (log-log).

    The y range follows the positive estimators; trig's errors reach 10^3 at small m and would
    flatten them. Points above the range are drawn clipped at the top edge as open triangles
    (their values are in the quality table), so no curve leaves the axes."""
    plt = _pyplot()
    n = len(s.logit_stds)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 2, 4.3), sharey=True, squeeze=False)
    colors = dict(zip(KERNELS, ("tab:blue", "tab:green", "tab:red", "tab:orange")))
    shown = [r["mean"] for r in quality if not r["estimator"].startswith("trig")]
    limits = (0.7 * min(shown), 2 * max(shown))
    clipped = []
    for ax, logit_std in zip(axes.flat, s.logit_stds):
        for kernel in KERNELS:
            for features, style in (("orthogonal", "-o"), ("iid", "--x")):
                name, color = f"{kernel}/{features}", colors[kernel]
                clipped += _plot_series(
                    ax, quality, name, logit_std, s, style, limits[1], color=color, label=name
                )
        clipped += _plot_series(
            ax, quality, PP, logit_std, s, ":s", limits[1], color="black", label="performer-pytorch"
        )
        uniform = _error(quality, "uniform", logit_std, None)
        if uniform is not None:
            ax.axhline(uniform, color="grey", lw=1, ls="-.", label="uniform (mean of v)")
        ax.set(xscale="log", yscale="log", ylim=limits, title=f"logit std s={logit_std}")
        ax.set_xticks(s.quality_ms, [str(m) for m in s.quality_ms], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("random features m")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel(f"relative error vs exact (L={s.quality_length}, {s.seeds} seeds)")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if clipped:
        fig.text(
            0.01,
            0.01,
            f"△ at the top edge: error above the axis (up to {max(clipped):.3g}), clipped there; "
            "the values are in the quality table",
            fontsize=8,
        )
    return _save(fig, path, rect=(0, 0.04 if clipped else 0, 1, 1))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, rect=(0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _plot_series(ax, quality, name, logit_std, s, style, top=None, **kw) -> list[float]:
    """Plot one estimator's mean error against m; points above ``top`` sit on it as open
    triangles. Returns the errors that were clipped."""
    points = [(m, _error(quality, name, logit_std, m)) for m in s.quality_ms]
    points = [(m, e) for m, e in points if e is not None]
    if not points:
        return []
    top = float("inf") if top is None else top
    ax.plot([m for m, _ in points], [min(e, top) for _, e in points], style, ms=4, **kw)
    over = [(m, e) for m, e in points if e > top]
    if over:
        ax.plot(
            [m for m, _ in over],
            [top] * len(over),
            "^",
            ms=8,
            mfc="white",
            mec=kw.get("color"),
            clip_on=False,
        )
    return [e for _, e in over]


def _plot_speed(speed: list[dict], s: Settings, path: Path) -> Path:
    """Time and peak memory against L, per direction; fwd+bwd solid, fwd dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for col, causal in enumerate((False, True)):
        for impl, color in zip(IMPLS, ("tab:blue", "tab:grey", "tab:red")):
            for backward, style in ((True, "-o"), (False, "--x")):
                cases = [_find(speed, impl, causal, backward, n) for n in s.lengths]
                ok = [c for c in cases if c["status"] == "ok"]
                label = f"{LABELS[impl]} {'fwd+bwd' if backward else 'fwd'}"
                for row, key in enumerate((TIME, MEM)):
                    xs, ys = [c["length"] for c in ok], [c[key] for c in ok]
                    axes[row, col].plot(xs, ys, style, color=color, label=label, ms=4)
        axes[0, col].set_title("causal" if causal else "bidirectional")
        axes[1, col].set_xlabel("sequence length L")
    for ax, ylabel in zip(axes.flat, ("time (s)", "", "peak RSS rise (MiB)", "")):
        ax.set(xscale="log", yscale="log", ylabel=ylabel)
        ax.set_xticks(s.lengths, [str(n) for n in s.lengths], minor=False)
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


# ----------------------------------------------------------------------------- entry point


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> dict:
    """Run every attention benchmark; PNGs go to ``out_dir``, the returned dict is the JSON."""
    s = settings or (QUICK if quick else FULL)
    out_dir.mkdir(parents=True, exist_ok=True)
    started, code = time.monotonic(), code_version()  # the sources as the run starts
    speed = _speed(s)
    quality = _quality(s)
    targets = _targets(speed, quality, s)
    plots = [
        _plot_speed(speed, s, out_dir / "attention_speed.png"),
        _plot_quality(quality, s, out_dir / "attention_quality.png"),
    ]
    setup = f"batch 1, {s.heads} heads, d={s.dim}, m={s.features}, float32, 2 threads"
    markdown = "\n\n".join([
        f"### Attention speed and peak memory ({setup}; time: median; memory: peak RSS rise)",
        _speed_table(speed, s),
        f"† other processes kept ≥ {BUSY} CPUs busy on average while this case ran.",
        f"### Approximation quality (L={s.quality_length}, relative error vs exact float64, "
        f"mean of {s.seeds} seeds, orthogonal features unless marked iid)",
        _quality_table(quality, s),
        "### Targets",
        _targets_table(targets),
    ])  # fmt: skip
    return {
        "name": "attention",
        "quick": quick,
        "settings": asdict(s),
        "machine": machine_info(),
        "code": code,
        "elapsed_s": time.monotonic() - started,
        "speed": speed,
        "quality": quality,
        "ratios": {t["name"]: t["value"] for t in targets},
        "targets": targets,
        "plots": [p.name for p in plots],
        "markdown": markdown,
    }

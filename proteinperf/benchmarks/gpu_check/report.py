"""The markdown of ``gpu_check.md``, from the JSON report alone."""

from __future__ import annotations

from proteinperf.benchmarks._measure import markdown_table
from proteinperf.benchmarks.gpu_check.env import GPU_LIBRARIES


def _fmt(value, spec: str = ".3g", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _env(result: dict | None) -> list[str]:
    if not result:
        return ["Environment: not recorded."]
    gpu = result.get("gpu") or {}
    code = result.get("code") or {}
    modified = " (attention modified)" if code.get("attention_uncommitted") else ""
    libs = result.get("distributions", {})
    device = (
        f"{gpu['name']} ({gpu['memory_gib']:.0f} GiB, compute capability {gpu['capability']})"
        if gpu
        else result.get("device", "?")
    )
    versions = ", ".join(f"{name} {libs.get(name)}" for name in GPU_LIBRARIES if libs.get(name))
    return [
        f"- Device: {device}; driver {result.get('driver') or '-'}",
        f"- torch {result['torch']} (CUDA {result.get('torch_cuda') or '-'}, cuDNN "
        f"{result.get('cudnn') or '-'}), Python {result['python']}"
        + (f"; {versions}" if versions else ""),
        f"- fp32 matmul precision: {result.get('float32_matmul_precision')}; commit "
        f"{code.get('commit') or '-'}{modified}, attention sources sha256 "
        f"{str(code.get('attention_sha256'))[:12]}",
    ]


def _tests(result: dict) -> list[str]:
    lines = [
        f"{result.get('passed', 0)} passed, {result.get('failed', 0)} failed"
        + (f", {len(result['skipped'])} not run (time box)" if result.get("skipped") else "")
        + ". Relative Frobenius "
        f"error of the output and of dq, dk, dv against {result['reference']}; tolerance "
        f"fp32 {result['tolerances']['float32']:g}, bf16 {result['tolerances']['bfloat16']:g} "
        f"(trig: {result['trig_tolerances']['float32']:g}, "
        f"{result['trig_tolerances']['bfloat16']:g}).",
        "",
    ]
    rows = {}
    for c in result.get("cases", []):
        key = (
            c["kernel"],
            "causal" if c["causal"] else "bidirectional",
            "yes" if c["padded"] else "no",
        )
        cell = c.get("error") or _fmt(
            max((c.get("errors") or {"-": None}).values(), default=None), ".1e"
        )
        rows.setdefault(key, {})[c["dtype"]] = cell + ("" if c["passed"] else " FAIL")
    table = [
        [*key, cells.get("float32", "-"), cells.get("bfloat16", "-")] for key, cells in rows.items()
    ]
    lines.append(
        markdown_table(
            ["kernel", "direction", "padding", "fp32 worst error", "bf16 worst error"], table
        )
    )
    decoding = result.get("decoding", [])
    if decoding:
        lines += ["", "Decoding one token at a time against the full causal forward (fp32):", ""]
        lines.append(
            markdown_table(
                ["level", "attention", "length", "relative error", "passed"],
                [
                    [
                        d["level"],
                        d.get("kernel") or d.get("attention"),
                        d["length"],
                        d.get("failure") or _fmt(d.get("error"), ".1e"),
                        "yes" if d["passed"] else "NO",
                    ]
                    for d in decoding
                ],
            )
        )
    return lines


def _bench(result: dict) -> list[str]:
    shapes = result["shapes"]
    lines = [
        f"Batch {shapes['batch']}, {shapes['heads']} heads, d={shapes['dim']}, "
        f"m={shapes['features']}, {shapes['dtype']} inputs; SDPA backend: "
        f"{result['sdpa_backend']}. Median ms (CUDA events) / peak MiB above the inputs "
        "(max_memory_allocated).",
    ]
    cases = result.get("cases", [])
    columns = []
    for c in cases:
        column = (c["causal"], c["impl"])
        if column not in columns:
            columns.append(column)
    for mode, title in (("fwd_bwd", "forward + backward"), ("fwd", "forward (no autograd)")):
        mine = [c for c in cases if c["mode"] == mode]
        if not mine:
            continue
        lengths = sorted({c["length"] for c in mine})
        rows = []
        for length in lengths:
            row = [str(length)]
            for causal, impl in columns:
                c = next(
                    (
                        c
                        for c in mine
                        if (c["length"], c["causal"], c["impl"]) == (length, causal, impl)
                    ),
                    None,
                )
                if c is None:
                    row.append("-")
                elif c["status"] == "ok":
                    row.append(f"{c['median_ms']:.3g} / {_fmt(c['peak_mib'], '.0f')}")
                else:
                    row.append(c["status"])
            rows.append(row)
        headers = ["L"] + [f"{'causal' if causal else 'bid.'} {impl}" for causal, impl in columns]
        lines += ["", f"{title}:", "", markdown_table(headers, rows)]
    return lines


def _train(result: dict) -> list[str]:
    lines = [
        f"Corpus {result['corpus']} ({_fmt(result.get('corpus_tokens'), ',')} tokens); "
        f"{result['precision']}; bf16 peak {_fmt(result['peak_bf16_tflops'], 'g')} TFLOP/s.",
        f"FLOPs: {result['flop_formula']}.",
        "",
    ]
    rows = []
    for r in result.get("runs", []):
        if r.get("status") != "ok":
            rows.append([r["model"], r.get("status", "?"), *["-"] * 7])
            continue
        rows.append(
            [
                r["model"],
                f"{r['parameters'] / 1e6:.3g} M, {r['batch']}x{r['length']}",
                f"{r['timed_steps']} in {r['timed_s']:.0f} s",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['achieved_tflops']:.1f}",
                _fmt(r["mfu"] and 100 * r["mfu"], ".1f"),
                f"{r['loss_start']:.3f} -> {r['loss_end']:.3f}",
                f"{r['held_out_loss_start']:.3f} -> {r['held_out_loss_end']:.3f} "
                f"(unigram {r['unigram_loss']:.3f})",
                _fmt(r["peak_memory_gib"], ".1f"),
            ]
        )
    headers = [
        "model",
        "size",
        "timed steps",
        "tokens/s",
        "TFLOP/s",
        "MFU %",
        "train loss",
        "held-out loss",
        "peak GiB",
    ]
    lines.append(markdown_table(headers, rows))
    return lines


SECTION_TITLES = {
    "tests": ("Attention on the device against float64", _tests),
    "bench": ("Attention speed and memory: FAVOR+ against SDPA", _bench),
    "train": ("Paper-size training throughput", _train),
}


def markdown(report: dict) -> str:
    sections = report["sections"]
    title = "GPU check" + (" (dry run: CPU, tiny shapes)" if report["dry_run"] else "")
    lines = [
        f"# {title}",
        "",
        f"Started {report['started']}, {report.get('wall_s', 0):.0f} s of a "
        f"{report['budget_s']:.0f} s budget. `{' '.join(report['command'])}`",
        "",
    ]
    lines += _env((sections.get("env") or {}).get("result"))
    status_rows = [
        [
            name,
            e["status"],
            _fmt(e.get("wall_s"), ".0f"),
            _fmt(e.get("box_s"), ".0f"),
            e.get("error", ""),
        ]
        for name, e in sections.items()
    ]
    lines += ["", markdown_table(["section", "status", "s", "box s", "error"], status_rows)]
    for name, (heading, render) in SECTION_TITLES.items():
        result = (sections.get(name) or {}).get("result")
        if result:
            lines += ["", f"## {heading}", ""]
            try:
                lines += render(result)
            except (KeyError, TypeError, ValueError) as exc:  # a partial record
                lines.append(f"(incomplete: {type(exc).__name__}: {exc})")
    problems = report.get("problems") or []
    lines += ["", "Problems: " + ("none" if not problems else "; ".join(problems))]
    return "\n".join(lines)

"""``make gpu-check``: one prepared, time-boxed check of a single GPU.

    python -m proteinperf.benchmarks.gpu_check [--out DIR] [--corpus FASTA] [--budget-s 480]
    python -m proteinperf.benchmarks.gpu_check --dry-run --out DIR   # CPU, tiny shapes, seconds

Sections (each in a fresh worker process with its own time box, see ``runner``):
  env         the machine and library versions (``env``)
  tests       every attention kernel and direction on the device, forward and backward, fp32
              and bf16, against float64 references; decoding against the full forward
              (``correctness``)
  bench       bidirectional and causal FAVOR+ against SDPA over sequence lengths: time and
              peak memory (``speed``)
  train       throughput of the paper-size bidirectional and causal models on real proteins:
              tokens/s, model FLOPs utilisation, loss at start and end (``throughput``)
Results: ``DIR/gpu_check.json`` (rewritten after every section, so a failed or killed run keeps
what it measured) and ``DIR/gpu_check.md``.
"""

SECTIONS = ("env", "tests", "bench", "train")

"""Names shared by the library and the command line: the choices a user can type.

Plain tuples and numbers, no imports: the CLI builds its parsers (and `--help`) from these
without loading torch, NumPy or Lightning. Library modules import them from here so that each
list exists once.
"""

# Model
OBJECTIVES = ("mlm", "clm")  # masked LM (bidirectional), next-token LM (causal)
KERNELS = ("softmax", "softmax_hyp", "softmax_opt", "relu", "trig")  # FAVOR feature maps
ATTENTIONS = ("softmax", *(f"favor_{kernel}" for kernel in KERNELS))  # softmax = exact
FEATURE_SCALINGS = ("chi", "sqrt_d")  # norms of the orthogonal random features

# Data
INVALID_POLICIES = ("error", "unk", "skip-record")  # a character outside the alphabet
DATASETS = ("sample", "uniref50", "uniref90", "swissprot", "trembl")  # `proteinperf data`
CLUSTER_METHODS = ("cluster", "linclust")  # MMseqs2 modules

# Inference commands
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
DEFAULT_TOKS_PER_BATCH = 4096
DUPLICATE_POLICIES = ("error", "suffix", "skip")  # a FASTA id seen before
EMBED_INCLUDES = ("mean", "per-token", "bos")
EMBED_FORMATS = ("h5", "npz", "pt-dir")
CONTACT_FORMATS = ("npz", "csv")
SCORE_STRATEGIES = ("log-likelihood", "pseudo-log-likelihood", "wt-marginals")
# Sampling temperatures besides 0 (greedy): below 0.01 sampling is greedy in all but name, above
# 100 nearly uniform, and far outside (1e-45, 1e300) logits / T overflows float32 to NaN.
TEMPERATURE_RANGE = (0.01, 100.0)
MUTATION_STRATEGIES = ("masked-marginals", "wt-marginals", "pseudo-ppl", "log-likelihood-ratio")
SPLITS = ("train", "valid", "test")

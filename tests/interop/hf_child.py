"""Run by test_hf_export.py as `python -I hf_child.py SPEC RESULTS` from an empty folder: load
exported folders with transformers alone (proteinperf is made unimportable first) and save what
they compute, for the test to compare with proteinperf's own outputs.

SPEC (torch.save): {"folders": {name: {"path", "causal", "sequences", "labels", "prompts",
"max_new_tokens"}}}.
"""

import importlib.util
import sys

# An editable install of proteinperf puts a finder on sys.meta_path (python -I keeps
# PYTHONPATH and the working folder off sys.path already): drop it, as if never installed.
sys.meta_path[:] = [
    f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
]

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
)


def run(entry: dict) -> dict:
    path, causal = entry["path"], entry["causal"]
    auto = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = auto.from_pretrained(path, trust_remote_code=True)
    base = AutoModel.from_pretrained(path, trust_remote_code=True)
    batch = tokenizer(entry["sequences"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=entry["labels"], output_hidden_states=True)
        last = base(**batch).last_hidden_state
    result = {
        "classes": [
            type(o).__name__
            for o in (
                AutoConfig.from_pretrained(path, trust_remote_code=True),
                tokenizer,
                model,
                base,
            )
        ],
        "training": model.training,
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "logits": out.logits,
        "hidden_states": torch.stack(out.hidden_states, 1),
        "loss": out.loss,
        "last_hidden_state": last,
    }
    if causal:
        prompts = tokenizer(entry["prompts"], padding=True, return_tensors="pt")
        n = entry["max_new_tokens"]
        lengths = []  # tokens per decoding step: is the state carried from step to step?
        step = model.model.step
        model.model.step = lambda tokens, *a, **k: (
            lengths.append(tokens.shape[1]) or step(tokens, *a, **k)
        )
        result["generated"] = model.generate(**prompts, max_new_tokens=n, do_sample=False)
        result["step_lengths"] = lengths
        model.model.step = step
        alone = tokenizer(entry["prompts"][:1], return_tensors="pt")
        result["generated_uncached"] = model.generate(
            **alone, max_new_tokens=n, do_sample=False, use_cache=False
        )
        try:
            model.generate(**alone, max_new_tokens=n, num_beams=2)
            result["beams_with_cache"] = "ran"
        except ValueError as err:
            result["beams_with_cache"] = str(err)
        result["beams"] = model.generate(**alone, max_new_tokens=n, num_beams=2, use_cache=False)
    return result


def main(spec_path: str, results_path: str) -> None:
    spec = torch.load(spec_path, weights_only=True)
    results = {"proteinperf_importable": importlib.util.find_spec("proteinperf") is not None}
    results["folders"] = {name: run(entry) for name, entry in spec["folders"].items()}
    torch.save(results, results_path)


if __name__ == "__main__":
    main(*sys.argv[1:])

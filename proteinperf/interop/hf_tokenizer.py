"""transformers' tokenizer of an exported proteinperf model: proteinperf's alphabet itself.

Carried into the exported folder as ``tokenization_proteinperf.py`` with the alphabet module,
so the ids are the alphabet's (ESM-2's) by construction. A sequence is framed ``<cls> ...
<eos>``, as fair-esm's batch converter frames it; causal models are exported with
``add_eos=False`` (a prompt to continue) and left padding (``generate``'s convention).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizer

from proteinperf.data.alphabet import get_alphabet


class ProteinperfTokenizer(PreTrainedTokenizer):
    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, add_eos: bool = True, **kwargs):
        self.alphabet = get_alphabet()
        self.add_eos = add_eos
        for role in ("cls", "pad", "eos", "unk", "mask"):
            kwargs.setdefault(f"{role}_token", f"<{role}>")
        kwargs.setdefault("bos_token", "<cls>")
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.alphabet.tok_to_idx)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self.alphabet.tokens[i] for i in self.alphabet.tokenize(text)]

    def _convert_token_to_id(self, token: str) -> int:
        return self.alphabet.tok_to_idx.get(token, self.alphabet.unk_idx)

    def _convert_id_to_token(self, index: int) -> str:
        return self.alphabet.tokens[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None) -> list[int]:
        end = [self.alphabet.eos_idx] if self.add_eos else []
        ids = [self.alphabet.cls_idx, *token_ids_0, *end]
        if token_ids_1 is not None:
            ids += [*token_ids_1, *end]
        return ids

    def get_special_tokens_mask(
        self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return [int(self.alphabet.is_special(i)) for i in token_ids_0]
        end = [1] if self.add_eos else []
        mask = [1, *[0] * len(token_ids_0), *end]
        if token_ids_1 is not None:
            mask += [*[0] * len(token_ids_1), *end]
        return mask

    def save_vocabulary(self, save_directory, filename_prefix=None) -> tuple:
        return ()  # the vocabulary is the alphabet module carried beside this file

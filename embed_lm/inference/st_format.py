"""The sentence-transformers folder layout of an exported embedder, and the tokenizer rule that makes it agree with
our collator. Used by `python -m embed_lm.export`.

Files written next to the Hugging Face model (config.json + model.safetensors + tokenizer), in the legacy format
that every sentence-transformers release from 2.x to 6.x loads:

    modules.json                        Transformer -> Pooling -> Normalize
    sentence_bert_config.json           max_seq_length (the run's data.max_length), do_lower_case
    1_Pooling/config.json               pooling_mode_lasttoken | _mean_tokens | _weightedmean_tokens, include_prompt
    2_Normalize/                        L2 normalisation (no parameters)
    config_sentence_transformers.json   named prompts ({"query": "Instruct: ...\\nQuery: ", "document": ""}),
                                        default_prompt_name null, cosine similarity

Decoder recipe: our collator ends every text in EOS, after truncation. sentence-transformers only calls the
tokenizer, so the exported tokenizer gets a post-processor template `[BOS] $A EOS` (BOS where the tokenizer adds one
itself) and add_eos_token=true; a fast tokenizer reserves room for the template's tokens when it truncates, so the
EOS survives truncation exactly as in the collator. `check_tokenizer` proves it on probe texts after the export.
Padding side is set to right: sentence-transformers passes no position ids, and the default positions 0..n-1 equal
ours (from the attention mask) only under right padding.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from embed_lm.errors import UserError
from embed_lm.model.collator import TextCollator
from embed_lm.model.pooling import Pooling

ST_POOLING_KEYS = {"last_token": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens",
                   "weighted_mean": "pooling_mode_weightedmean_tokens"}
ALL_ST_POOLING_KEYS = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_tokens",
                       "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                       "pooling_mode_lasttoken")


class ExportError(UserError, RuntimeError):
    """The exported folder would not reproduce our embeddings (e.g. its tokenizer differs from the collator)."""


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _versions() -> dict[str, str]:
    import torch
    import transformers

    try:
        import sentence_transformers

        st = sentence_transformers.__version__
    except ImportError:
        st = "3.0.0"  # the oldest release that reads every key written here (similarity_fn_name)
    return {"sentence_transformers": st, "transformers": transformers.__version__, "pytorch": torch.__version__}


def write_st_modules(out: Path, pooling: Pooling, dim: int, max_length: int, prompts: dict[str, str]) -> None:
    """Write the sentence-transformers module files into `out` (the model and tokenizer are saved separately)."""
    if pooling.name not in ST_POOLING_KEYS:
        raise ExportError(f"pooling {pooling.name!r} has no sentence-transformers equivalent "
                          f"(supported: {sorted(ST_POOLING_KEYS)})")
    _dump(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    _dump(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    modes = {key: key == ST_POOLING_KEYS[pooling.name] for key in ALL_ST_POOLING_KEYS}
    _dump(out / "1_Pooling" / "config.json", {"word_embedding_dimension": dim, **modes,
                                              "include_prompt": not pooling.exclude_instruction})
    (out / "2_Normalize").mkdir(exist_ok=True)
    _dump(out / "config_sentence_transformers.json", {
        "__version__": _versions(), "prompts": prompts, "default_prompt_name": None,
        "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"})


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def append_eos_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make `tokenizer(text)` end in EOS (after truncation too), keeping its own BOS rule; in place."""
    from tokenizers import processors

    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    with_bos = adds_bos(tokenizer)
    head = f"{bos}:0 " if with_bos else ""
    special = ([(bos, tokenizer.bos_token_id)] if with_bos else []) + [(eos, tokenizer.eos_token_id)]
    if hasattr(type(tokenizer), "add_eos_token"):  # transformers 5: the flags rebuild the template on load
        tokenizer.add_bos_token = with_bos
        tokenizer.add_eos_token = True
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{head}$A:0 {eos}:0", pair=f"{head}$A:0 {eos}:0 $B:1 {eos}:1", special_tokens=special)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path, append_eos: bool, max_length: int) -> None:
    """Save the run's tokenizer for sentence-transformers and AutoTokenizer: EOS template (decoders), right padding,
    model_max_length = the run's max length. The tokenizer passed in is left as it is (the collator shares it)."""
    tokenizer = copy.deepcopy(tokenizer)
    if append_eos:
        append_eos_template(tokenizer)
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(out)
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    # loading details of this machine and the state of the collator's last call, not properties of the model
    for key in ("is_local", "local_files_only", "max_length", "stride", "truncation_strategy"):
        config.pop(key, None)
    config.update(padding_side="right", model_max_length=max_length)
    if append_eos:
        config.update(add_bos_token=adds_bos(tokenizer), add_eos_token=True)
    _dump(path, config)


def check_tokenizer(out: Path, collator: TextCollator, prefix: str) -> None:
    """Raise ExportError unless the saved tokenizer, called as sentence-transformers calls it, gives the collator's
    token ids on probe texts (short, with the query prompt, and longer than max_length)."""
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    long = "the exported tokenizer must keep the final token after truncation " * (collator.max_length // 4 + 8)
    probes = [("", "a short document"), (prefix, "a short query"), ("", long), (prefix, long)]
    ours = [ids for ids, _ in collator.tokenize([p for p, _ in probes], [t for _, t in probes])]
    theirs = tokenizer([p + t for p, t in probes], truncation=True, max_length=collator.max_length)["input_ids"]
    for (p, t), a, b in zip(probes, ours, theirs):
        if a != b:
            raise ExportError(f"{out / 'tokenizer.json'}: the exported tokenizer gives {len(b)} tokens ending in "
                              f"{b[-3:]} for {(p + t)[:40]!r}..., the run's collator {len(a)} ending in {a[-3:]}; "
                              "sentence-transformers would not reproduce our embeddings (tokenizer class "
                              f"{type(tokenizer).__name__}; see embed_lm/inference/st_format.py)")

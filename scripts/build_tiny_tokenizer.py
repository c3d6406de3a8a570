"""Build the small byte-level BPE tokenizer that the tiny test backbones use (embed_lm/assets/tiny_tokenizer/).

    python scripts/build_tiny_tokenizer.py

Trained deterministically on the bundled sample data's training text, with LLaMA/Mistral-style special tokens
(<unk>=0, <s>=1, </s>=2; pad = eos as in Mistral). Byte-level, so any text (names, digits, other scripts) encodes.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "embed_lm" / "assets" / "tiny_tokenizer"
VOCAB_SIZE = 4096


def training_text() -> list[str]:
    rows = (ROOT / "data/sample/train/synthetic/short_long.jsonl").read_text().splitlines()
    texts = []
    for row in map(json.loads, rows):
        texts += [row["user_query"], row["positive_document"]]
    return texts


def main() -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(  # prepend BOS like LLaMA/Mistral; EOS is the collator's job
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>", model_max_length=32768)
    OUT.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()

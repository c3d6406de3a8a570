"""HFLocalGenerator on a tiny random Llama saved to disk: it runs through the pipeline, and its garbage is
discarded and counted rather than written as examples."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from embed_lm.model.backbone import TINY_TOKENIZER
from embed_lm.synth.generators import GeneratorError, HFLocalGenerator
from embed_lm.synth.pipeline import Plan, run

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llm")
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_tiny_local_model_runs_and_its_garbage_is_discarded(tiny_llm, tmp_path):
    gen = HFLocalGenerator(str(tiny_llm), max_new_tokens=12, device="cpu")
    assert gen._prompt([{"role": "user", "content": "hi"}]) == "<|user|>hi\n<|assistant|>"  # chat template used
    c = gen([{"role": "user", "content": "Write a JSON object."}])
    assert c.prompt_tokens > 3 and 0 < c.completion_tokens <= 12 and c.retries == 0
    summary = run(gen, str(tmp_path), Plan(kinds=("sts", "short-long"), n_tasks=2, n_examples=2), concurrency=2,
                  progress=False, describe=gen.describe())
    assert summary["complete"] and summary["totals"]["examples"] == 0
    assert sum(summary["kinds"]["sts"]["discard_reasons"].values()) == 2
    assert set(summary["kinds"]["sts"]["discard_reasons"]) <= {"invalid_json", "truncated_output",
                                                                "empty_response", "not_an_object"}
    assert summary["kinds"]["short-long"]["step1_discard_reasons"]  # no task list -> its examples are skipped
    assert summary["tokens"]["completion"] > 0 and summary["generator"]["generator"] == "hf_local"


def test_missing_model_path_says_what_to_set(tmp_path):
    with pytest.raises(GeneratorError, match=r"no transformers model at .*nowhere.*model=/path"):
        HFLocalGenerator(str(tmp_path / "nowhere"))


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(tiny_llm):
    gen = HFLocalGenerator(str(tiny_llm), temperature=0, max_new_tokens=6, device="cpu", batch_size=3)
    conversations = [[{"role": "user", "content": text}] for text in
                     ["Write a JSON object.", "hi", "Brainstorm 3 distinct and useful text retrieval tasks please.",
                      "Two words"]]
    batched = gen.generate_batch(conversations)  # batches of 3 + 1, prompts of different lengths
    singles = [gen(c) for c in conversations]
    assert [c.text for c in batched] == [c.text for c in singles]  # greedy: padding changes nothing
    assert [(c.prompt_tokens, c.completion_tokens) for c in batched] == [
        (c.prompt_tokens, c.completion_tokens) for c in singles]
    assert len({c.prompt_tokens for c in batched}) == 4 and gen.tokenizer.padding_side == "left"

"""backbone=e5_mistral_instruct: the released model used as-is (no LoRA), with its own settings (last-token pooling
on an appended EOS, `Instruct: {task}\\nQuery: {query}`, max length 4096), from a local folder: a tiny random-init
Mistral saved to disk stands in for the 7B weights. Reference: the model card's recipe written out by hand."""

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from conftest import compose_config
from embed_lm.model.backbone import TinyBackbone
from embed_lm.inference.runs import load_base

TASK = "Given a web search query, retrieve relevant passages that answer the query"
QUERIES = ["how much protein should a female eat", "summit define"]


def model_card_embeddings(path, texts):
    """intfloat/e5-mistral-7b-instruct's usage: text + EOS, hidden state of the last real token, L2-normalised."""
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    for text in texts:
        ids = tok(text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state  # (1, L, D)
        out.append(F.normalize(hidden[0, -1], dim=-1))
    return torch.stack(out)  # (N, D)


def test_released_model_from_a_local_folder_embeds_as_its_model_card(tmp_path):
    stand_in = TinyBackbone("tiny_mistral", "mistral").load()
    stand_in.model.save_pretrained(tmp_path / "e5")
    stand_in.tokenizer.save_pretrained(tmp_path / "e5")
    for entry in ("evaluate", "passkey"):  # the backbone brings its pooling and instruction style
        cfg = compose_config(entry, ["run=null", "backbone=e5_mistral_instruct",
                                     f"backbone.model_name_or_path={tmp_path / 'e5'}"])
        assert cfg.pooling.name == "last_token" and cfg.instruction_style._target_.endswith("NaturalInstruction")
    assert cfg.backbone.append_eos and cfg.backbone.max_length == 4096
    cfg = compose_config("evaluate", ["run=null", "backbone=e5_mistral_instruct",
                                      f"backbone.model_name_or_path={tmp_path / 'e5'}"])
    embedder = load_base(cfg)
    assert embedder.collator.max_length == 4096
    assert not any("lora" in n for n, _ in embedder.encoder.backbone.named_parameters())  # used as-is
    queries = embedder.encode_queries(QUERIES, task=TASK)  # (N, D)
    expected = model_card_embeddings(tmp_path / "e5", [f"Instruct: {TASK}\nQuery: {q}" for q in QUERIES])
    assert (queries - expected).abs().max() < 1e-5
    docs = embedder.encode_documents(QUERIES)  # documents: no instruction
    assert (docs - model_card_embeddings(tmp_path / "e5", QUERIES)).abs().max() < 1e-5


def test_tiny_stand_in_has_the_same_settings():
    cfg = compose_config("evaluate", ["run=null", "backbone=e5_mistral_instruct", "backbone.size=tiny"])
    assert cfg.backbone.size == "tiny" and cfg.backbone.tiny.hidden_size == 128
    assert cfg.pooling.name == "last_token" and cfg.backbone.append_eos
    assert load_base(cfg).encode_queries(QUERIES, task=TASK).shape == (2, 128)

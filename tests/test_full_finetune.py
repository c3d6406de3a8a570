"""lora_rank=full (every weight trains, no adapter) through train, load_run and export; and LoRA targets that all
train: one backward pass gives every LoRA tensor (and every full-fine-tuning weight) a gradient."""

import copy

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from conftest import SAMPLE, compose_train
from embed_lm.export import main as export_main
from embed_lm.model.backbone import TinyBackbone, add_lora, full_finetune
from embed_lm.model.collator import TextCollator
from embed_lm.model.encoder import TextEncoder
from embed_lm.model.pooling import Pooling
from embed_lm.inference.runs import load_run
from embed_lm.train import train

TEXTS = ["apt: command-line package manager", "a library for parsing YAML", "tiny text editor for the console"]


def embed(model, tokenizer, append_eos, texts=TEXTS):
    """Our reference: the plain model, last-token pooling, no instruction (documents)."""
    batch = TextCollator(tokenizer, 32, append_eos, "right")([""] * len(texts), texts)
    with torch.inference_mode():
        return TextEncoder(model.eval(), Pooling("last_token"))(batch)  # (N, D)


def test_full_finetuning_run_trains_every_weight_saves_loads_and_exports(tmp_path):
    run = tmp_path / "run"
    train(compose_train(["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=none", "lora_rank=full",
                         "trainer.max_steps=2", "test_after_training=false"], run))
    assert not (run / "embedder" / "adapter").exists()
    saved = load_file(run / "embedder" / "model" / "model.safetensors")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    ckpt = {k.removeprefix("encoder.backbone."): v for k, v in ckpt.items()}
    assert set(saved) == set(ckpt)  # the checkpoint holds every weight: all of them trained
    init = TinyBackbone("tiny_mistral", "mistral").load()
    assert all(not torch.equal(saved[k], v) for k, v in init.model.state_dict().items() if k.endswith("q_proj.weight"))

    reference = copy.deepcopy(init.model)
    reference.load_state_dict(ckpt)  # the trained weights, applied by hand to a fresh random-init model
    expected = embed(reference, init.tokenizer, True)  # (N, D)
    ours, _ = load_run(run)
    assert (ours.encode_documents(TEXTS) - expected).abs().max() < 1e-5
    assert (embed(init.model, init.tokenizer, True) - expected).abs().max() > 1e-3  # training changed them

    out = tmp_path / "export"
    export_main([f"run={run}", f"out={out}"])
    exported, _ = load_run(out)
    assert (exported.encode_documents(TEXTS) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("backbone", ["minilm", "tiny_mistral"])
@pytest.mark.parametrize("rank", ["r8", "full"])
def test_every_trainable_tensor_gets_a_gradient_in_one_step(backbone, rank):
    cfg = compose_train([f"backbone={backbone}", f"lora_rank={rank}", "data=sample"])
    loaded = instantiate(cfg.backbone).load()
    if cfg.lora_rank.r is None:
        model = full_finetune(loaded.model)
    else:
        model = add_lora(loaded.model, cfg.lora_rank.r, 16, 0.0, loaded.lora_target_modules)
        with torch.no_grad():  # lora_B starts at zero, so lora_A's first gradient would be zero too
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    docs = (SAMPLE / "test" / "corpus.jsonl").read_text().splitlines()[:4]
    batch = TextCollator(loaded.tokenizer, 32, loaded.append_eos, "right")([""] * 4, docs)
    emb = TextEncoder(model.train(), Pooling("mean"))(batch)  # (B, D)
    (emb @ emb.T).logsumexp(dim=1).sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    if rank != "full":
        assert all("lora_" in n for n in trainable)
    if backbone == "minilm":  # the embedder never uses BERT's pooler: no adapter on it, and it stays frozen
        assert not any("pooler" in n for n in trainable)

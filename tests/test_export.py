"""python -m embed_lm.export: sentence-transformers and AutoModel load the merged folder and reproduce our Embedder.

The runs here are built without training (the real config, LoRA added, lora_B set to random values so the merge
changes the weights) and saved in the layout train.py writes; that takes seconds even for MiniLM.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import SAMPLE, compose_train
from embed_lm.model.backbone import add_lora
from embed_lm.inference.cli import run_main
from embed_lm.model.collator import TextCollator
from embed_lm.export import main
from embed_lm.inference.runs import load_run
from embed_lm.inference.st_format import ExportError, check_tokenizer, save_tokenizer

TOL = 1e-5  # fp32 on CPU; sentence-transformers batches and pads differently from us (measured ~3e-7)


def make_run(out, overrides):
    cfg = compose_train(["data=sample", "debug=smoke", "logger=none", *overrides], out)  # max_length 64
    backbone = instantiate(cfg.backbone).load()
    model = add_lora(backbone.model, cfg.lora_rank.r, cfg.lora.alpha, 0.0, backbone.lora_target_modules)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(out / "embedder" / "adapter")
    backbone.tokenizer.save_pretrained(out / "embedder" / "tokenizer")
    (out / "embedder" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return out


def sample_texts():
    """Queries and documents, several longer than max_length (64 tokens): truncation must keep the EOS."""
    rows = (SAMPLE / "test" / "queries.jsonl").read_text().splitlines()[:10]
    rows += (SAMPLE / "test" / "corpus.jsonl").read_text().splitlines()[:10]
    return [json.loads(r)["text"] for r in rows]


@pytest.mark.parametrize("overrides", [["backbone=tiny_mistral"], ["backbone=tiny_mistral", "pooling=weighted_mean"],
                                       ["backbone=minilm", "pooling=mean"]], ids=lambda o: "-".join(o))
def test_sentence_transformers_and_automodel_give_our_embeddings(overrides, tmp_path):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    run, out = make_run(tmp_path / "run", overrides), tmp_path / "export"
    main([f"run={run}", f"out={out}"])
    ours, cfg = load_run(run)
    texts = sample_texts()
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 64 and st.prompts["document"] == ""
    q_ours = ours.encode_queries(texts, task=cfg.data.test.task)  # (N, D)
    q_st = st.encode(texts, prompt_name="query", batch_size=7, convert_to_tensor=True)  # (N, D)
    d_ours, d_st = ours.encode_documents(texts), st.encode(texts, batch_size=7, convert_to_tensor=True)
    assert (q_ours - q_st).abs().max() < TOL and (d_ours - d_st).abs().max() < TOL
    assert (q_ours - d_ours).abs().max() > 1e-3  # the query prompt is in use

    model, tok = AutoModel.from_pretrained(str(out)).eval(), AutoTokenizer.from_pretrained(str(out))
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (N, L, D)
    pooled = ours.encoder.pooling(hidden, batch["attention_mask"], torch.zeros_like(batch["attention_mask"]))
    assert (F.normalize(pooled, dim=-1) - d_ours).abs().max() < TOL  # (N, D)


def test_exported_tokenizer_must_end_in_eos(tiny_mistral, tmp_path):
    tok = tiny_mistral.tokenizer
    collator = TextCollator(tok, 32, append_eos=True)
    tok.save_pretrained(tmp_path / "plain")  # BOS only: the collator's EOS would be missing
    with pytest.raises(ExportError, match="tokenizer"):
        check_tokenizer(tmp_path / "plain", collator, "Instruct: x\nQuery: ")
    save_tokenizer(tok, tmp_path / "eos", append_eos=True, max_length=32)
    check_tokenizer(tmp_path / "eos", collator, "Instruct: x\nQuery: ")
    assert tok("a")["input_ids"][-1] != tok.eos_token_id  # the run's own tokenizer is left as it was


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    for argv, expected in [([f"run={tmp_path}", f"out={tmp_path / 'x'}"], "adapter_config.json"),
                           ([f"run={tmp_path}", f"out={tmp_path}"], "not empty")]:
        (tmp_path / "keep.txt").write_text("not an export")
        with pytest.raises(SystemExit) as e:
            run_main(lambda: main(argv))
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and "Traceback" not in err


def test_a_merged_export_loads_as_a_run(tmp_path):
    """embed_lm.evaluate / encode / passkey accept the export folder itself (run=<export>)."""
    run, out = make_run(tmp_path / "run", ["backbone=tiny_mistral"]), tmp_path / "export"
    main([f"run={run}", f"out={out}"])
    ours, cfg = load_run(run)
    merged, merged_cfg = load_run(out)
    texts = sample_texts()
    assert merged_cfg.backbone.model_name_or_path == "."  # the export folder itself, wherever it is moved
    torch.testing.assert_close(merged.encode_queries(texts, task=cfg.data.test.task),
                               ours.encode_queries(texts, task=cfg.data.test.task), atol=TOL, rtol=0)
    torch.testing.assert_close(merged.encode_documents(texts), ours.encode_documents(texts), atol=TOL, rtol=0)

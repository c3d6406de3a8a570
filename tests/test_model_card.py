"""python -m embed_lm.export card=true push_to_hub=...: the model card parses back with valid metadata and the
run's scores, and the upload is exactly the export folder (HfApi monkeypatched: no network)."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from embed_lm.inference import model_card
from embed_lm.export import main
from embed_lm.inference.model_card import card_data, upload_plan

SCORES = {"suite": "mteb_en", "model": "tiny", "command": "python -m embed_lm.evaluate run=<run> eval=mteb_en",
          "avg": 41.5, "n_tasks": 2, "categories": {},
          "tasks": [{"task": "SciFact", "task_type": "Retrieval", "main_score": "ndcg_at_10", "score": 50.0},
                    {"task": "STSBenchmark", "task_type": "STS", "main_score": "cosine_spearman", "score": 33.0}]}


class FakeApi:
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    run = shutil.copytree(tiny_run, tmp / "run", ignore=shutil.ignore_patterns("checkpoints"))
    (run / "eval" / "mteb_en").mkdir(parents=True)
    (run / "eval" / "mteb_en" / "scores.json").write_text(json.dumps(SCORES))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- backbone=tiny_mistral\n- data=sample\n")
    mp = pytest.MonkeyPatch()
    mp.setattr(model_card, "HfApi", FakeApi)
    FakeApi.calls = []
    main([f"run={run}", f"out={tmp / 'export'}", "card=true", "push_to_hub=someone/tiny-embedder"])
    mp.undo()
    return tmp / "export", FakeApi.calls


def test_card_metadata_and_scores_parse_back(exported):
    out, _ = exported
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "sentence-transformers" and data.pipeline_tag == "sentence-similarity"
    assert data.base_model is None  # a random-init tiny model has no hub base model
    assert "embed_lm" in data.tags and data.model_name == "tiny-embedder"
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {(f"MTEB {t['task']}", t["main_score"]): t["score"] for t in SCORES["tasks"]}
    text = card.text
    assert "Instruct: Given a one-line summary of a Debian software package" in text  # the query prompt
    assert 'SentenceTransformer("someone/tiny-embedder")' in text and "AutoModel.from_pretrained" in text
    assert SCORES["command"] in text and "python -m embed_lm.train backbone=tiny_mistral data=sample" in text
    assert "lora_rank:" in text  # the resolved config


def test_upload_is_the_export_folder(exported):
    out, calls = exported
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == "someone/tiny-embedder" and calls[0][2]["exist_ok"] is True
    upload = calls[1][1]
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "someone/tiny-embedder"
    (out / ".cache").mkdir(exist_ok=True)
    (out / ".cache" / "junk").write_text("x")
    files = upload_plan(out)
    expected = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert files == expected
    assert {"README.md", "modules.json", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)


def test_card_names_a_hub_base_model_and_the_training_data():
    cfg = {"backbone": {"model_name_or_path": "mistralai/Mistral-7B-v0.1", "size": "full"},
           "data": {"name": "synthetic_msmarco"}, "pooling": {"name": "last_token"}}
    data = card_data(cfg, [], "m")
    assert data.base_model == "mistralai/Mistral-7B-v0.1" and data.datasets == ["microsoft/ms_marco"]
    cfg["backbone"]["model_name_or_path"] = "/models/Mistral-7B-v0.1"
    assert card_data(cfg, [], "m").base_model is None  # a local path is not a hub id

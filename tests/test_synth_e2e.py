"""End to end: generate all six kinds through the real `openai` client (loopback server), report on the folder, and
train the tiny backbone a few steps on it through the normal config and DataModule."""

import json
import math
from collections import Counter

import pytest
from conftest import compose_train
from synth_fixtures import chat_server, fake_llm  # noqa: F401  (fixture)

from embed_lm.data.synthetic import SyntheticSource
from embed_lm.model.instructions import TASK_KINDS
from embed_lm.synth.generators import OpenAIGenerator
from embed_lm.synth.pipeline import Plan, run
from embed_lm.synth.report import main as report_main
from embed_lm.train import train


def flaky_llm(prompt, n):
    """Every 5th example answer is prose, every 7th has lost a field; brainstorms are always fine."""
    answer = fake_llm(prompt, n)
    if prompt.startswith("Brainstorm"):
        return answer
    if n % 5 == 0:
        return "As an AI model I would rather describe the example in words."
    return answer.replace('"S3"', '"S_3"').replace('"positive_document"', '"positive"') if n % 7 == 0 else answer


def test_generated_data_reports_and_trains_the_tiny_backbone(chat_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-e2e")
    server = chat_server(respond=flaky_llm)
    out = tmp_path / "synth"
    plan = Plan(n_tasks=4, tasks_per_request=2, n_examples=8, seed=0)
    summary = run(OpenAIGenerator("fake-model", base_url=server.url), str(out), plan, concurrency=4, progress=False)
    assert summary["complete"] and len(server.calls) == 8 + 48
    kept, discarded = summary["totals"]["examples"], summary["totals"]["discarded"]
    assert kept + discarded == 48 and 8 <= discarded <= 20
    examples = SyntheticSource("synthetic", str(out / "*.jsonl")).load()  # strict reader: every line is valid
    assert len(examples) == kept and {e.task_kind for e in examples} == set(TASK_KINDS)

    report_main([str(out)])
    assert "| short-long |" in capsys.readouterr().out
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["examples"] == kept
    assert sum(k["discarded"] for k in report["kinds"].values()) == discarded
    assert report["kinds"]["short-long"]["discard_rate"] == pytest.approx(
        summary["kinds"]["short-long"]["discarded"] / 8, abs=1e-3)
    assert sum(report["languages"].values()) == kept and "English" in report["languages"]
    assert report["kinds"]["short-long"]["words"]["positive"]["median"] == 8
    for name in ["kinds.png", "languages.png", "tokens.png", "task_map.png"] + [
            f"lengths_{k.replace('-', '_')}.png" for k in TASK_KINDS]:
        assert (out / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "report" / "report.md").read_text()
    assert "![kinds.png](kinds.png)" in md and "## Tasks" in md and "Examples per kind and language" in md
    written = {k: [json.loads(x) for x in (out / f"{k.replace('-', '_')}.jsonl").read_text().splitlines()]
               for k in TASK_KINDS}
    for kind, recs in written.items():  # per kind and language, against the files themselves
        assert report["kinds"][kind]["languages"] == dict(Counter(r["language"] for r in recs))
    samples = (out / "report" / "samples.md").read_text()
    assert samples.count("### sts #") == min(20, len(written["sts"])) and "**S1**" in samples
    brainstormed = {t for x in (out / "tasks" / "short_long.jsonl").read_text().splitlines()
                    for t in json.loads(x)["tasks"]}
    assert report["tasks"]["kinds"]["short-long"]["distinct"] == len(brainstormed)
    assert sum(c["size"] for c in report["tasks"]["clusters"]) == report["tasks"]["mapped"]

    cfg = compose_train(["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=none",
                         "test_after_training=false", "trainer.max_steps=3", "~data.sources.msmarco", "data.dev=null",
                         f"data.sources.synthetic.paths={out}/*.jsonl",
                         "data.sources.synthetic.split_by_kind=false"], tmp_path / "run")  # a few rows per kind
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    assert (tmp_path / "run" / "embedder" / "adapter" / "adapter_model.safetensors").is_file()

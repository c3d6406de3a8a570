"""The pipeline with an in-process fake generator (output format, discard/duplicate counting, resume after a kill,
dry run) and the entry point's config and CLI."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from synth_fixtures import FakeGenerator

from embed_lm.data.synthetic import SyntheticSource
from embed_lm.model.instructions import TASK_KINDS
from embed_lm.synth.pipeline import Plan, dry_run, run
from embed_lm.synth.store import DISCARDED_DIR, SUMMARY, OutputStore, StoreError, kind_file

PLAN = Plan(n_tasks=3, tasks_per_request=2, n_examples=4, seed=0)  # 2 step-1 requests per asymmetric kind


def records(out):
    """request_id -> (file name, record) over every file the run writes; fails on a repeated id."""
    seen = {}
    for path in sorted(out.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            assert rec["request_id"] not in seen, f"{rec['request_id']} written twice"
            seen[rec["request_id"]] = (str(path.relative_to(out)), rec)
    return seen


def planned_ids(plan):
    return {r.id for r in plan.step1()} | {f"{k}/example/{i}" for k in plan.kinds for i in range(plan.n_examples)}


def test_writes_the_jsonl_the_training_reader_reads(tmp_path):
    summary = run(FakeGenerator(), str(tmp_path), PLAN, concurrency=3, progress=False,
                  prices_per_1m=(2.0, 10.0))
    for kind in TASK_KINDS:
        lines = [json.loads(x) for x in (tmp_path / kind_file(kind)).read_text().splitlines()]
        assert len(lines) == 4 and all(x["task"] and x["task_kind"] == kind and x["language"] for x in lines)
    examples = SyntheticSource("synthetic", str(tmp_path / "*.jsonl")).load()  # strict: raises on a bad line
    assert len(examples) == 24 and {e.task_kind for e in examples} == set(TASK_KINDS)
    sl = [e for e in examples if e.task_kind == "short-long"]
    assert len({e.task for e in sl}) == 3 and all(e.negatives for e in sl)  # 3 of the 4 brainstormed tasks kept
    assert set(records(tmp_path)) == planned_ids(PLAN)
    assert summary["complete"] and summary["totals"] == {"examples": 24, "discarded": 0, "duplicates": 0}
    n = len(planned_ids(PLAN))  # 8 + 24 requests, 100 prompt + 20 completion tokens each
    assert summary["tokens"] == {"prompt": 100 * n, "completion": 20 * n, "total": 120 * n}
    assert summary["cost_usd"] == pytest.approx((100 * n * 2.0 + 20 * n * 10.0) / 1e6)
    assert json.loads((tmp_path / SUMMARY).read_text())["runs"][0]["status"] == "finished"


class ByKind(FakeGenerator):
    """STS answers are all the same (duplicates), bitext answers are prose, long-short drops a field."""

    def __call__(self, messages):
        c = super().__call__(messages)
        prompt = messages[-1]["content"]
        if "semantic textual similarity" in prompt:
            return type(c)('{"S1": "a", "S2": "b", "S3": "c"}', 10, 5)
        if "translation retrieval" in prompt:
            return type(c)("I am sorry, I can't write that.", 10, 5)
        if '"misleading_label"' in prompt:
            return type(c)('{"input_text": "x", "label": "y"}', 10, 5)
        return c


def test_discards_and_duplicates_are_counted_per_reason(tmp_path):
    summary = run(ByKind(), str(tmp_path), PLAN, concurrency=2, progress=False)
    k = summary["kinds"]
    assert k["sts"] == {**k["sts"], "examples": 1, "duplicates": 3, "discarded": 0}
    assert k["bitext"]["discard_reasons"] == {"invalid_json": 4} and k["bitext"]["examples"] == 0
    assert k["long-short"]["discard_reasons"] == {"missing_field:misleading_label": 4}
    assert k["short-long"]["examples"] == 4 and summary["totals"] == {"examples": 13, "discarded": 8,
                                                                      "duplicates": 3}
    discarded = [json.loads(x) for p in (tmp_path / DISCARDED_DIR).glob("*.jsonl") for x in p.read_text().splitlines()]
    assert len(discarded) == 11 and all(d["reason"] and "raw" in d or d["reason"] == "duplicate" for d in discarded)
    assert summary["complete"]  # discarded requests are done: a rerun does not ask again
    gen = FakeGenerator()
    run(gen, str(tmp_path), PLAN, progress=False)
    assert gen.calls == 0


def test_resume_after_a_kill_mid_file_neither_repeats_nor_loses_examples(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(FakeGenerator(stop_after=15), str(tmp_path), PLAN, concurrency=3, progress=False)
    first = records(tmp_path)
    assert 8 <= len(first) < len(planned_ids(PLAN))
    # the kill also cut the last line of a file in half
    written = [tmp_path / kind_file(k) for k in TASK_KINDS if (tmp_path / kind_file(k)).exists()]  # some may not be
    path = max(written, key=lambda p: p.stat().st_size)
    data = path.read_bytes()
    cut_id = json.loads(data.splitlines()[-1])["request_id"]
    path.write_bytes(data[:-25])
    assert OutputStore(tmp_path, read_only=True).repaired  # seen, not yet cut
    gen = FakeGenerator()
    summary = run(gen, str(tmp_path), PLAN, concurrency=3, progress=False)
    done = records(tmp_path)
    assert set(done) == planned_ids(PLAN) and summary["complete"]
    assert gen.calls == len(planned_ids(PLAN)) - len(first) + 1  # the rest, plus the request whose line was cut
    assert all(done[i] == first[i] for i in first if i != cut_id)  # what was written stays as it was
    assert [r["status"] for r in summary["runs"]] == ["interrupted", "finished"]
    SyntheticSource("synthetic", str(tmp_path / "*.jsonl")).load()


def test_a_bad_line_in_the_middle_names_file_and_line(tmp_path):
    (tmp_path / "sts.jsonl").write_text('{"request_id": "sts/example/0", "task_kind": "sts", "S1": "a", "S2": "b", '
                                        '"S3": "c", "task": "t"}\nnot json\n{}\n')
    with pytest.raises(StoreError, match=r"sts.jsonl:2: .*out="):
        OutputStore(tmp_path)


def test_dry_run_prints_prompts_and_counts_and_sends_nothing(tmp_path):
    text = dry_run(str(tmp_path / "out"), PLAN)
    assert not (tmp_path / "out").exists()
    for kind in TASK_KINDS:
        assert f"===== {kind}/example/0" in text
    assert "===== short-long/tasks/0" in text and "===== sts/tasks" not in text
    assert "8 +       24 = 32 requests; 0 already done" in text
    gen = FakeGenerator()
    run(gen, str(tmp_path / "out"), Plan(n_tasks=3, tasks_per_request=2, n_examples=2, seed=0), progress=False)
    assert "20 already done in" in dry_run(str(tmp_path / "out"), PLAN)  # 8 + 12 done, 12 to send


def test_config_composes_for_each_generator_and_holds_no_key():
    for generator, target in [("openai", "OpenAIGenerator"), ("hf_local", "HFLocalGenerator"),
                              ("openai_batch", "OpenAIBatchGenerator"), ("vllm", "VLLMGenerator")]:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="synth", overrides=[f"generator={generator}", "model=m"])
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["generator"]["_target_"].endswith(target) and resolved["generator"]["model"] == "m"
        assert "api_key" not in resolved["generator"] and set(resolved["kinds"]) == set(TASK_KINDS)
    GlobalHydra.instance().clear()


def test_cli_dry_run_needs_no_model_and_no_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "embed_lm.synth", "dry_run=true", "n_examples=3", f"out={tmp_path}/o",
                        f"hydra.run.dir={tmp_path}/h"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "===== short-long/example/0" in r.stdout and "4 +       18 = 22 requests; 0 already done" in r.stdout
    r = subprocess.run([sys.executable, "-m", "embed_lm.synth", f"out={tmp_path}/o", f"hydra.run.dir={tmp_path}/h"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "error: name the model: model=<name>" in r.stderr
    r = subprocess.run([sys.executable, "-m", "embed_lm.synth", "model=m", f"out={tmp_path}/o",
                        f"hydra.run.dir={tmp_path}/h"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "error: generator=openai: the environment variable OPENAI_API_KEY is not" in r.stderr

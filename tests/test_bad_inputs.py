"""What a user can get wrong, and what embed_lm answers: exit status 2 and a message naming the option, file:line or
folder, before anything heavy loads; a real bug keeps its traceback. Also the loading guarantees (a crafted
checkpoint or run folder never runs its payload; an export loads its own weights wherever it is moved) and the resume
guarantees (a changed config is refused with a diff; a finished run continues to more steps).

Most cases compose the real config (conftest.compose_train / compose_config) and call the entry point's own wrapper
in-process; three run as subprocesses to prove the command line's exit status and the absence of a traceback.
"""

import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose_config, compose_train
from embed_lm import encode as encode_cli
from embed_lm import evaluate as evaluate_entry
from embed_lm import export as export_cli
from embed_lm import train as train_entry
from embed_lm.inference.cli import run_main
from embed_lm.errors import exit_on_user_error
from embed_lm.inference.runs import load_run, model_parts
from embed_lm.training.resume import CONFIG_KEY

TINY = ["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=none", "test_after_training=false"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def expect_exit(capsys, fn, *args) -> str:
    """Run fn(*args) as an entry point does; assert exit status 2 and return the one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(fn, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


def assert_words(message: str, words: tuple[str, ...]) -> None:
    assert message.startswith("error: "), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


# --- training options: one row per mistake (override, words the message must hold) --------------------------------
TRAIN_CASES = [
    (["data.batch_size=abc"], ("data.batch_size='abc'", "integer >= 1")),
    (["data.batch_size=0"], ("data.batch_size=0", "integer >= 1")),
    (["data.batch_size=1.5"], ("data.batch_size=1.5", "not an integer")),
    (["data.eval_batch_size=0"], ("data.eval_batch_size", ">= 1")),
    (["data.max_length=1"], ("data.max_length=1", ">= 2")),
    (["data.negatives_per_query=-1"], ("data.negatives_per_query=-1", ">= 0")),
    (["data.num_workers=-1"], ("data.num_workers", ">= 0")),
    (["data.single_source_batches=maybe"], ("data.single_source_batches", "true or false")),
    (["optimizer.lr=abc"], ("optimizer.lr='abc'", "number > 0")),
    (["optimizer.lr=0"], ("optimizer.lr=0", "number > 0")),
    (["optimizer.lr=-1e-4"], ("optimizer.lr", "number > 0")),
    (["optimizer.weight_decay=-0.1"], ("optimizer.weight_decay", ">= 0")),
    (["optimizer.warmup_steps=-5"], ("optimizer.warmup_steps", ">= 0")),
    (["optimizer.betas=[0.9,1.5]"], ("optimizer.betas.1=1.5", "[0, 1)")),
    (["optimizer.betas=[0.9]"], ("optimizer.betas", "two numbers")),
    (["optimizer.grad_clip=0"], ("optimizer.grad_clip", "> 0 or null")),
    (["lora_rank.r=0"], ("lora_rank.r=0", ">= 1", "LoRA rank")),
    (["lora.alpha=0"], ("lora.alpha", "> 0")),
    (["lora.dropout=1.0"], ("lora.dropout", "[0, 1)")),
    (["loss.temperature=0"], ("loss.temperature", "> 0")),
    (["loss=cached_infonce", "loss.mini_batch_size=0"], ("loss.mini_batch_size", ">= 1")),
    (["trainer.max_steps=-2"], ("trainer.max_steps", ">= -1")),
    (["trainer.accumulate_grad_batches=0"], ("trainer.accumulate_grad_batches", ">= 1")),
    (["trainer.limit_train_batches=0"], ("trainer.limit_train_batches", "> 0")),
    (["callbacks.model_checkpoint.every_n_train_steps=0"], ("every_n_train_steps", ">= 1")),
    (["seed=abc"], ("seed", "an integer")),
    (["gradient_checkpointing=maybe"], ("gradient_checkpointing", "true or false")),
    (["data.sources.synthetic.ratio=0"], ("data.sources.synthetic.ratio", "> 0 or null")),
    (["data.sources.msmarco.skip_invalid=sometimes"], ("data.sources.msmarco.skip_invalid", "true or false")),
    (["data.sources.synthetic.paths=/no/such/dir/*.jsonl"], ("data.sources.synthetic.paths", "no file matches")),
    (["data.sources.msmarco.collection=/no/such/collection.tsv"], ("data.sources.msmarco.collection",
                                                                    "no file matches")),
    (["data.dev.path=/no/such/beir"], ("data.dev.path", "no such folder")),
    (["~data.sources.synthetic", "~data.sources.msmarco"], ("data.sources is empty",)),
    (["pooling.name=max"], ("pooling.name='max'", "last_token, mean, weighted_mean")),
    (["backbone.padding_side=middle"], ("backbone.padding_side", "left, right")),
    (["backbone.size=huge"], ("backbone.size", "full, tiny")),
    (["backbone.tiny.hidden_size=0"], ("backbone.tiny.hidden_size", ">= 1")),
    (["backbone._target_=shutil.copy"], ("backbone._target_='shutil.copy'", "embed_lm.model.backbone")),
    (["instruction_style._target_=builtins.exec"], ("instruction_style._target_", "NaturalInstruction")),
    (["backbone=mistral", "backbone.model_name_or_path=/no/such/model"], ("backbone 'mistral'", "/no/such/model")),
    (["ckpt_path=/no/such/last.ckpt"], ("ckpt_path=/no/such/last.ckpt", "no such checkpoint")),
]


@pytest.mark.parametrize("overrides,words", TRAIN_CASES, ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_train_option_mistakes_exit_2_naming_the_option(overrides, words, tmp_path, capsys):
    cfg = compose_train([*TINY, *overrides], tmp_path / "run")
    assert_words(expect_exit(capsys, train_entry.train, cfg), words)
    assert not (tmp_path / "run").exists()  # refused before anything was written (or loaded)


def test_model_folder_without_tokenizer_is_named_before_weights_load(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "mistral"}')
    cfg = compose_train([*TINY, "backbone=mistral", f"backbone.model_name_or_path={model}"], tmp_path / "run")
    assert_words(expect_exit(capsys, train_entry.train, cfg),
                 (str(model), "holds no tokenizer", "tokenizer.json"))


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_a_data_path_that_cannot_be_a_file_is_named(where, tmp_path, capsys):
    """Works as root too (root reads every file, so a chmod 0 file would not fail): a folder where a file is
    expected, and a path below a regular file."""
    data = tmp_path / "collection.tsv"
    if where == "folder":
        data.mkdir()
        words = (str(data), "is not a file")
    else:
        data.write_text("1\tpassage\n")
        data = data / "collection.tsv"
        words = (str(data), "no file matches")
    cfg = compose_train([*TINY, f"data.sources.msmarco.collection={data}"], tmp_path / "run")
    assert_words(expect_exit(capsys, train_entry.train, cfg), ("data.sources.msmarco.collection", *words))
    assert not (tmp_path / "run").exists()


# --- data files: readers that already name file:line (the `data` branch adds more) --------------------------------
def synthetic(tmp_path, name, lines):
    from embed_lm.data.synthetic import SyntheticSource

    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return SyntheticSource("synthetic", str(path)).load, path


def msmarco_jsonl(tmp_path, lines):
    from embed_lm.data.msmarco import MsMarcoSource

    path = tmp_path / "msmarco.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return MsMarcoSource("msmarco", jsonl=str(path)).load, path


def msmarco_triples(tmp_path, rows):
    from embed_lm.data.msmarco import MsMarcoSource

    path = tmp_path / "triples.tsv"
    path.write_text("\n".join(rows) + "\n")
    return MsMarcoSource("msmarco", triples=str(path)).load, path


def beir_split(tmp_path, qrels_rows):
    from embed_lm.data.beir import BeirSplit

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    path = tmp_path / "qrels" / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_rows) + "\n")
    return BeirSplit(str(tmp_path), "test", "task").load, path


GOOD_SL = {"task": "t", "user_query": "q", "positive_document": "p", "hard_negative_document": "n"}
READER_CASES = [
    ("synthetic invalid JSON", lambda t: synthetic(t, "short_long.jsonl", [json.dumps(GOOD_SL), "{oops"]),
     (":2:", "invalid JSON")),
    ("synthetic missing field", lambda t: synthetic(t, "short_long.jsonl", [json.dumps({"task": "t"})]),
     (":1:", "field 'user_query'", "missing")),
    ("synthetic empty positive", lambda t: synthetic(t, "short_long.jsonl", [json.dumps(GOOD_SL | {
        "positive_document": " "})]), (":1:", "positive_document", "non-empty")),
    ("synthetic unknown kind", lambda t: synthetic(t, "data.jsonl", [json.dumps(GOOD_SL)]),
     (":1:", "task_kind")),
    ("synthetic not an object", lambda t: synthetic(t, "sts.jsonl", ["[1, 2]"]), (":1:", "JSON object")),
    ("msmarco positive not text", lambda t: msmarco_jsonl(t, [json.dumps({"query": "q", "positive": 3})]),
     (":1:", "positive", "non-empty string")),
    ("msmarco no positive", lambda t: msmarco_jsonl(t, [json.dumps({"query": "q"})]), (":1:", "missing")),
    ("msmarco 2-column triples", lambda t: msmarco_triples(t, ["q\tp\tn", "q\tp"]),
     (":2:", "expected 3 tab-separated columns")),
    ("beir qrels score 1.5", lambda t: beir_split(t, ["q1\td1\t1.5"]), (":2:", "score", "'1.5'", "integer")),
    ("beir qrels unknown doc", lambda t: beir_split(t, ["q1\td9\t1"]), (":2:", "corpus-id", "'d9'")),
]


@pytest.mark.parametrize("name,make,words", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_bad_data_lines_name_file_and_line(name, make, words, tmp_path, capsys):
    load, path = make(tmp_path)
    message = expect_exit(capsys, load)
    assert_words(message, (str(path), *words))


# --- evaluate ----------------------------------------------------------------------------------------------------
def evaluate_cfg(tmp_path, *overrides):
    return compose_config("evaluate", ["wandb.enabled=false", f"output_dir={tmp_path / 'eval'}", *overrides])


@pytest.mark.parametrize("overrides,words", [
    (["batch_size=0"], ("batch_size=0", ">= 1")),
    (["max_length=1"], ("max_length=1", ">= 2")),
    (["max_tokens=abc"], ("max_tokens", "integer")),
    (["run=/no/such/run"], ("/no/such/run", "is not a training run")),
    (["eval.tasks=[NoSuchTask]"], ("eval.tasks", "NoSuchTask")),
], ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_evaluate_option_mistakes_exit_2(overrides, words, tmp_path, capsys):
    cfg = evaluate_cfg(tmp_path, *overrides)
    assert_words(expect_exit(capsys, evaluate_entry.evaluate, cfg), words)


def test_evaluate_names_file_and_line_of_a_bad_qrels_score_before_the_model_loads(tmp_path, capsys, monkeypatch):
    beir_split(tmp_path, ["q1\td1\t1", "q1\td1\t1.5"])
    monkeypatch.setattr(evaluate_entry, "load_run", lambda *a, **k: pytest.fail("the model loaded"))
    cfg = evaluate_cfg(tmp_path, "eval=beir", f"eval.path={tmp_path}", "eval.instruction=x", "run=/any")
    message = expect_exit(capsys, evaluate_entry.evaluate, cfg)
    assert_words(message, (f"{tmp_path / 'qrels' / 'test.tsv'}:3", "'1.5'"))


def test_evaluate_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch):
    """A ValueError from a bug is not a user error: it propagates (traceback), no exit 2."""
    def bug(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(evaluate_entry, "build_tasks", bug)
    with pytest.raises(ValueError, match="a bug deep inside"):
        exit_on_user_error(evaluate_entry.evaluate, evaluate_cfg(tmp_path))


# --- encode / export command lines ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["--batch-size", "0"], ("--batch-size=0", ">= 1")),
    (["--max-tokens", "0"], ("--max-tokens=0", ">= 1")),
    (["--max-length", "1"], ("--max-length=1", ">= 2")),
    (["--input", "/no/such/input.jsonl"], ("/no/such/input.jsonl", "no such file")),
], ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_encode_option_mistakes_exit_2(argv, words, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n")
    args = ["run=/any", f"--input={texts}", f"--output={tmp_path / 'out.npy'}", *argv]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: encode_cli.main(args))
    assert exit_info.value.code == 2
    assert_words(capsys.readouterr().err, words)


def test_encode_blank_line_names_file_and_line(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\n\nthree\n")
    with pytest.raises(SystemExit):
        run_main(lambda: encode_cli.main(["run=/any", f"--input={texts}", f"--output={tmp_path / 'o.npy'}"]))
    assert_words(capsys.readouterr().err, (f"{texts}:2", "blank line"))


def test_export_max_length_and_missing_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_main(lambda: export_cli.main(["run=/no/such/run", f"out={tmp_path / 'x'}", "--max-length", "1"]))
    assert_words(capsys.readouterr().err, ("max_length=1", "at least 2"))
    with pytest.raises(SystemExit):
        run_main(lambda: export_cli.main(["run=/no/such/run", f"out={tmp_path / 'x'}"]))
    assert_words(capsys.readouterr().err, ("/no/such/run", "is not a training run"))


# --- loading never executes code from files -----------------------------------------------------------------------
class Payload:
    """Unpickling this calls shutil.copy(this file, marker): the marker appears if the checkpoint's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return shutil.copy, (__file__, str(self.marker))


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the session's tiny run (embedder/ + checkpoints/) that a test may tamper with."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("csv", "wandb", "eval"))
    return run


def test_pickled_checkpoint_payload_never_runs(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = run_copy / "checkpoints" / "evil.ckpt"
    state = torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save(state | {"extra": Payload(marker)}, evil)
    message = expect_exit(capsys, load_run, evil)  # what encode / evaluate / export / passkey call
    assert_words(message, (str(evil), "refused", "shutil.copy"))
    cfg = compose_train([*TINY, f"ckpt_path={evil}"], tmp_path / "resumed")  # resuming training from it
    assert_words(expect_exit(capsys, train_entry.train, cfg), (str(evil), "refused"))
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unrestricted unpickler runs it
    assert marker.exists()


def test_corrupt_checkpoint_is_named_without_suggesting_weights_only_false(run_copy, capsys):
    bad = run_copy / "checkpoints" / "broken.ckpt"
    bad.write_bytes(b"\x80\x02 not a checkpoint" * 8)
    message = expect_exit(capsys, load_run, bad)
    assert_words(message, (str(bad), "not a readable checkpoint"))
    assert "weights_only" not in message


EVIL_PARTS = [
    ("backbone", lambda m: {"_target_": "shutil.copy", "src": __file__, "dst": str(m)}),
    ("instruction_style", lambda m: {"_target_": "builtins.exec", "_args_": [f"open({str(m)!r}, 'w').close()"]}),
    ("pooling", lambda m: {"_target_": "embed_lm.model.pooling.Pooling", "name": "mean",
                           "exclude_instruction": {"_target_": "shutil.copy", "src": __file__, "dst": str(m)}}),
]


@pytest.mark.parametrize("section,payload", EVIL_PARTS, ids=[p[0] for p in EVIL_PARTS])
def test_run_folder_yaml_naming_code_is_refused_and_never_runs(section, payload, run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = run_copy / "embedder" / "config.yaml"
    cfg = OmegaConf.load(path)
    cfg[section] = payload(marker)
    OmegaConf.save(cfg, path)
    assert_words(expect_exit(capsys, load_run, run_copy), (str(path), section, "refused"))
    assert not marker.exists()


def test_trust_remote_code_is_never_read_from_a_folder():
    saved = OmegaConf.create({"backbone": {"_target_": "embed_lm.model.backbone.build_backbone", "name": "x",
                                           "architecture": "mistral", "model_name_or_path": "/m", "append_eos": True,
                                           "lora_target_modules": [], "trust_remote_code": True},
                              "pooling": {"_target_": "embed_lm.model.pooling.Pooling", "name": "mean"},
                              "instruction_style": {"_target_": "embed_lm.model.instructions.NoInstruction"}})
    spec, _, _ = model_parts(saved, "folder", trust_remote_code=False)  # what load_run passes without the flag
    assert spec.trust_remote_code is False


def test_malicious_run_folder_on_the_command_line_exits_2_without_running(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    path = run_copy / "embedder" / "config.yaml"
    cfg = OmegaConf.load(path)
    cfg.backbone = {"_target_": "shutil.copy", "src": __file__, "dst": str(marker)}
    OmegaConf.save(cfg, path)
    texts = tmp_path / "texts.txt"
    texts.write_text("one\n")
    proc = subprocess.run([sys.executable, "-m", "embed_lm.encode", f"run={run_copy}", f"--input={texts}",
                           f"--output={tmp_path / 'o.npy'}"], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


# --- an export is self-contained ------------------------------------------------------------------------------------
def test_export_moved_or_copied_loads_its_own_weights(tiny_run, tmp_path):
    texts = ["a short query", "a longer document about Debian packages and their descriptions"]
    first = tmp_path / "first"
    export_cli.export(tiny_run, first)
    reference = load_run(first)[0].encode(texts)  # (2, D)
    moved = tmp_path / "moved"
    first.rename(moved)
    torch.testing.assert_close(load_run(moved)[0].encode(texts), reference, rtol=0, atol=0)
    copied = tmp_path / "copied"
    shutil.copytree(moved, copied)
    (moved / "config.json").write_text("not json")  # any read of the original location would now fail
    (moved / "model.safetensors").write_bytes(b"")
    torch.testing.assert_close(load_run(copied)[0].encode(texts), reference, rtol=0, atol=0)
    assert str(first) not in (copied / "embed_lm.yaml").read_text()


# --- resumes and re-runs --------------------------------------------------------------------------------------------
def test_checkpoint_records_its_resolved_config(tiny_run):
    state = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state[CONFIG_KEY]["pooling"]["name"] == "last_token" and state[CONFIG_KEY]["trainer"]["max_steps"] == 2


@pytest.mark.parametrize("change,words", [
    (["pooling=mean"], ("pooling.name: 'last_token' -> 'mean'", "resume.allow_changes=[pooling.name]")),
    (["optimizer.lr=5e-5"], ("optimizer.lr: 0.0001 -> 5e-05",)),
    (["data.batch_size=4"], ("data.batch_size: 8 -> 4",)),
    (["lora_rank=r8"], ("lora_rank.r: 16 -> 8",)),
], ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_resume_with_a_changed_config_is_refused_with_a_diff(change, words, tiny_run, tmp_path, capsys):
    cfg = compose_train([*TINY, "trainer.max_steps=2", *change, f"ckpt_path={tiny_run}/checkpoints/last.ckpt"],
                        tmp_path / "resumed")
    assert_words(expect_exit(capsys, train_entry.train, cfg),
                 ("was trained with another config", *words))


class PastTheCheck(Exception):
    pass


def test_allowed_change_passes_the_check(tiny_run, tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise PastTheCheck

    monkeypatch.setattr(train_entry.L, "seed_everything", stop)
    cfg = compose_train([*TINY, "trainer.max_steps=2", "optimizer.lr=5e-5", "resume.allow_changes=[optimizer.lr]",
                         f"ckpt_path={tiny_run}/checkpoints/last.ckpt"], tmp_path / "resumed")
    with pytest.raises(PastTheCheck):  # got past the check to the training set-up
        train_entry.train(cfg)


def test_rerunning_a_finished_folder_with_another_config_is_refused_not_relabelled(run_copy, capsys):
    before = {p: (run_copy / p).read_bytes() for p in ("done.json", "embedder/config.yaml")}
    cfg = compose_train([*TINY, "trainer.max_steps=2", "pooling=mean"], run_copy)
    assert_words(expect_exit(capsys, train_entry.train, cfg),
                 (f"run folder {run_copy}", "pooling.name: 'last_token' -> 'mean'"))
    assert {p: (run_copy / p).read_bytes() for p in before} == before


def test_a_finished_folder_whose_record_predates_configs_is_not_relabelled(run_copy, capsys):
    record = json.loads((run_copy / "done.json").read_text())
    (run_copy / "done.json").write_text(json.dumps({k: v for k, v in record.items() if k != "config"}))
    before = (run_copy / "done.json").read_bytes()
    cfg = compose_train([*TINY, "trainer.max_steps=2", "pooling=mean"], run_copy)
    assert_words(expect_exit(capsys, train_entry.train, cfg),
                 (f"run folder {run_copy}", "another config", "another folder"))
    assert (run_copy / "done.json").read_bytes() == before


def test_continuing_a_finished_run_to_more_steps_equals_a_straight_run(tiny_run, tmp_path):
    """tiny_run stopped at max_steps=2; continued to 4 it matches a 4-step run (warm-up is 2 steps, so the LR
    schedules agree; the data position and RNG state resume exactly)."""
    from safetensors.torch import load_file

    continued, straight = tmp_path / "continued", tmp_path / "straight"
    train_entry.train(compose_train([*TINY, "trainer.max_steps=4", f"ckpt_path={tiny_run}/checkpoints/last.ckpt"],
                                    continued))
    train_entry.train(compose_train([*TINY, "trainer.max_steps=4"], straight))
    assert torch.load(continued / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    a, b = (load_file(d / "embedder" / "adapter" / "adapter_model.safetensors") for d in (continued, straight))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    old = load_file(tiny_run / "embedder" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(old[k], a[k]) for k in a)  # the two extra steps trained


# --- the command line: exit status and no traceback -------------------------------------------------------------
def test_train_command_line_user_error_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "embed_lm.train", *TINY, "data.batch_size=abc",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "data.batch_size='abc'" in proc.stderr and "Traceback" not in proc.stderr


# --- every entry point: a UserError is one line on stderr and exit status 2 --------------------------------------
def hydra_args(t: Path, *args: str) -> list[str]:
    return [*args, f"paths.log_dir={t}", f"hydra.run.dir={t}/hydra", "hydra.output_subdir=null"]


ENTRY_POINTS = [  # (module run as `python -m`, argv with one mistake, words the one line must hold)
    ("embed_lm.train", lambda t: hydra_args(t, *TINY, "data.batch_size=abc"), ("data.batch_size='abc'",)),
    ("embed_lm.evaluate", lambda t: hydra_args(t, "batch_size=0", "wandb.enabled=false"), ("batch_size=0",)),
    ("embed_lm.encode", lambda t: ["run=/any", f"--input={t}/none.txt", f"--output={t}/o.npy"],
     ("none.txt", "no such file")),
    ("embed_lm.export", lambda t: ["run=/no/such/run", f"out={t}/x"], ("/no/such/run", "is not a training run")),
    ("embed_lm.mine", lambda t: hydra_args(t, "input.jsonl=/no/such/pairs.jsonl", "input.collection=null",
                                           "input.queries=null", "input.qrels=null", f"output={t}/m.jsonl"),
     ("/no/such/pairs.jsonl",)),
    ("embed_lm.synth", lambda t: [f"out={t}/synth", "dry_run=true", "n_tasks=-1", f"hydra.run.dir={t}/hydra"],
     ("n_tasks",)),
    ("embed_lm.synth.report", lambda t: [f"{t}/nothing"], ("{t}/nothing", "no synthesis folder")),
    ("embed_lm.passkey", lambda t: hydra_args(t, "run=/no/such/run", "wandb.enabled=false"), ("/no/such/run",)),
    ("embed_lm.report", lambda t: ["runs", f"{t}/norun"], ("norun", "no metrics file")),
    ("embed_lm.plan", lambda t: hydra_args(t, "data.batch_size=abc"), ("data.batch_size='abc'",)),
]


@pytest.fixture
def restore_logging_and_hydra():
    """An in-process Hydra main configures the root logger and the global Hydra instance: undo both."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    GlobalHydra.instance().clear()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy of an imported module
@pytest.mark.parametrize("module,argv,words", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_every_entry_point_prints_a_user_error_as_one_line_and_exits_2(module, argv, words, tmp_path, capsys,
                                                                       monkeypatch, restore_logging_and_hydra):
    """The module's own `__main__` block (runpy, as `python -m` runs it) with one bad input: exit status 2, one
    `error:` line naming the input, no traceback."""
    monkeypatch.setattr(sys, "argv", [module, *argv(tmp_path)])
    monkeypatch.setattr(os, "_exit", sys.exit)  # synth leaves with os._exit (no wait for requests in flight)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert_words(lines[0], tuple(w.replace("{t}", str(tmp_path)) for w in words))


# --- issue 23 item 3: each refusal is one line naming the file, line or option, before the model loads ---------------
@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a backbone's weights start to load (the refusal must come first)."""
    from embed_lm.model.backbone import PretrainedBackbone, TinyBackbone

    def load(self):
        pytest.fail("the model loaded before the refusal")

    monkeypatch.setattr(TinyBackbone, "load", load)
    monkeypatch.setattr(PretrainedBackbone, "load", load)


def synthetic_file(tmp_path, n_lines: int, name: str = "short_long.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(GOOD_SL | {"user_query": f"q{i}"}) + "\n" for i in range(n_lines)))
    return path


def synthetic_only(tmp_path, path, *overrides):
    return compose_train([*TINY, "~data.sources.msmarco", f"data.sources.synthetic.paths={path}",
                          f"data.cache_dir={tmp_path / 'cache'}", *overrides], tmp_path / "run")


@pytest.mark.parametrize("lines,words", [
    ([], ("it is empty",)),
    (["{oops"], ("every line was invalid", "skip_invalid")),
], ids=["empty", "all lines skipped"])
def test_a_training_file_without_examples_is_refused_before_the_model_loads(lines, words, tmp_path, capsys,
                                                                            no_model_load):
    path = tmp_path / "short_long.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    cfg = synthetic_only(tmp_path, path, "data.sources.synthetic.skip_invalid=true")
    message = expect_exit(capsys, train_entry.train, cfg)
    assert_words(message, (str(path), "no training examples", "data.sources.synthetic", *words))
    assert not (tmp_path / "run").exists()


def test_a_source_smaller_than_the_batch_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    cfg = synthetic_only(tmp_path, synthetic_file(tmp_path, 3), "data.batch_size=8")
    message = expect_exit(capsys, train_entry.train, cfg)
    assert_words(message, ("synthetic/short-long", "3 examples", "data.batch_size=8", "Lower data.batch_size"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ratios,words", [
    ("{sts:-1}", ("data.sources.synthetic.kind_ratios", "non-negative")),
    ("{poems:1}", ("data.sources.synthetic.kind_ratios", "poems")),
    ("{sts:1}", ("data.sources.synthetic.kind_ratios", "no weight for ['short-long']")),
], ids=["negative", "unknown kind", "present kind missing"])
def test_bad_kind_ratios_are_refused_before_the_model_loads(ratios, words, tmp_path, capsys, no_model_load):
    cfg = synthetic_only(tmp_path, synthetic_file(tmp_path, 20), f"data.sources.synthetic.kind_ratios={ratios}")
    assert_words(expect_exit(capsys, train_entry.train, cfg), words)
    assert not (tmp_path / "run").exists()


def test_packing_with_an_encoder_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    cfg = compose_train([*TINY, "backbone=minilm", "packing=true"], tmp_path / "run")
    assert_words(expect_exit(capsys, train_entry.train, cfg), ("packing=true", "backbone.architecture='bert'",
                                                                "packing=false"))
    assert not (tmp_path / "run").exists()  # nothing written: no on_exception.ckpt


def test_a_damaged_arrow_cache_is_rebuilt(tmp_path, caplog):
    from embed_lm.data.synthetic import SyntheticSource
    from embed_lm.data.tables import ensure_built

    source = SyntheticSource("synthetic", str(synthetic_file(tmp_path, 20)))
    folder = ensure_built(source, tmp_path / "cache")
    arrow = folder / "examples.arrow"
    for damage in (lambda b: b"\x00garbage" * 10, lambda b: b[: len(b) // 2]):  # overwritten, truncated
        arrow.write_bytes(damage(arrow.read_bytes()))
        with caplog.at_level(logging.WARNING, logger="embed_lm.data.tables"):
            assert ensure_built(source, tmp_path / "cache") == folder
        assert str(folder) in caplog.text and "rebuilding" in caplog.text
        assert len(source.open(folder)) == 20
        caplog.clear()


def test_the_cache_key_follows_the_content_not_the_size_and_mtime(tmp_path):
    from embed_lm.data.synthetic import SyntheticSource
    from embed_lm.data.tables import cache_folder

    path = synthetic_file(tmp_path, 5)
    source = SyntheticSource("synthetic", str(path))
    before, stat = cache_folder(source, tmp_path / "cache"), path.stat()
    path.write_text(path.read_text().replace("q1", "q7"))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # modification time put back
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert cache_folder(source, tmp_path / "cache") != before
    os.utime(path)  # touched, content unchanged: the same table
    edited = cache_folder(source, tmp_path / "cache")
    os.utime(path, ns=(1, 1))
    assert cache_folder(source, tmp_path / "cache") == edited


def run_synth(tmp_path, monkeypatch, capsys, *args) -> str:
    """python -m embed_lm.synth generator=openai_batch against a closed port; returns the one error line."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(sys, "argv", ["embed_lm.synth", "generator=openai_batch", "model=m", "n_tasks=2",
                                      "n_examples=0", "generator.base_url=http://127.0.0.1:9/v1",
                                      "generator.max_retries=0", f"out={tmp_path / 'out'}",
                                      f"hydra.run.dir={tmp_path / 'hydra'}", "progress=false", *args])
    monkeypatch.setattr(os, "_exit", sys.exit)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("embed_lm.synth", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_openai_batch_against_an_unreachable_server_is_one_line(tmp_path, monkeypatch, capsys,
                                                                restore_logging_and_hydra):
    assert_words(run_synth(tmp_path, monkeypatch, capsys), ("http://127.0.0.1:9/v1", "generator.base_url",
                                                            "rerun the same command"))


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_a_damaged_batch_ledger_names_file_and_line(tmp_path, monkeypatch, capsys, restore_logging_and_hydra):
    ledger = tmp_path / "out" / "batches" / "ledger.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"event": "uploaded", "step": "tasks", "input_file_id": "file-1",
                                  "input": "tasks-0.input.jsonl", "requests": 1}) + "\n" + '{"event": "crea\n')
    assert_words(run_synth(tmp_path, monkeypatch, capsys), (f"{ledger}:2", "delete"))


def test_export_push_to_hub_offline_is_one_line_and_the_local_export_is_complete(tiny_run, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: export_cli.main([f"run={tiny_run}", f"out={out}", "--push-to-hub", "someone/model"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert_words(lines[0], ("--push-to-hub someone/model", "HF_HUB_OFFLINE", str(out), "huggingface-cli upload"))
    assert len(load_run(out)[0].encode(["a query"])) == 1  # the local export is complete and loads
    assert (out / "README.md").is_file()


def test_encode_names_file_and_line_of_a_non_utf8_text(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"one\ncaf\xe9 latin-1\nthree\n")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: encode_cli.main(["run=/any", f"--input={texts}", f"--output={tmp_path / 'o.npy'}"]))
    assert exit_info.value.code == 2
    assert_words(capsys.readouterr().err, (f"{texts}:2", "not valid UTF-8", "0xe9"))
    assert not (tmp_path / "o.npy").exists()


# --- issue 21 item 6: one CLI style, every entry point documented by --help --------------------------------------
HELP = [  # (module, words its --help must show)
    *((m, (f"python -m {m}:", "Options are key=value overrides", "== Configuration groups ==")) for m in
      ("embed_lm.train", "embed_lm.evaluate", "embed_lm.mine", "embed_lm.synth", "embed_lm.passkey", "embed_lm.plan")),
    ("embed_lm.encode", ("usage: python -m embed_lm.encode", "--input", "key=value")),
    ("embed_lm.export", ("usage: python -m embed_lm.export", "--push-to-hub", "key=value")),
    ("embed_lm.report", ("usage: python -m embed_lm.report", "table4", "runs")),
    ("embed_lm.synth.report", ("usage: python -m embed_lm.synth.report", "folder")),
    ("embed_lm.passkey.plot", ("usage: python -m embed_lm.passkey.plot", "--out")),
]


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module,words", HELP, ids=[h[0] for h in HELP])
def test_every_entry_point_documents_itself_with_help(module, words, capsys, monkeypatch, restore_logging_and_hydra):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__")
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for word in words:
        assert word in out, f"{word!r} not in the --help of {module}:\n{out}"


def test_key_value_reads_as_the_flag_in_every_plain_entry_point(tmp_path, capsys):
    """`out=x` is `--out x` for subcommands too, and a flag's own value that looks like key=value stays a value."""
    from embed_lm import report

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(report.main, ["runs", str(tmp_path / "norun"), f"out={tmp_path / 'r.png'}"])
    assert exit_info.value.code == 2 and "no metrics file" in capsys.readouterr().err  # parsed, then refused
    args = encode_cli.build_parser().parse_args(["run=r", "--task", "x=y", "input=a", "--output", "b"])
    assert (args.run, args.task, str(args.input), str(args.output)) == ("r", "x=y", "a", "b")

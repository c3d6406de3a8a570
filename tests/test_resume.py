"""A run stopped by a crash or Ctrl-C resumes from its checkpoint exactly (LoRA dropout on): the same per-step
losses, metrics.csv labels and final adapter as an uninterrupted run, wherever in a step the interrupt landed."""

import csv

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from conftest import SAMPLE, compose_train
from embed_lm.train import train

BASE = ["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=csv", "trainer.max_steps=4",
        "test_after_training=false", "callbacks.model_checkpoint.every_n_train_steps=1", "lora.dropout=0.1",
        "data.dev=null", "data.max_length=32"]


def adapter(run_dir):
    return load_file(run_dir / "embedder" / "adapter" / "adapter_model.safetensors")


def losses(run_dir) -> list[tuple[int, float]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    train(compose_train(BASE, run))
    return run


# hook=on_before_backward: Ctrl-C inside step k's training step (its dropout masks drawn, no optimiser step yet): the
# checkpoint is step k-1 as of its end. hook=on_train_batch_end: inside step k's end-of-step hooks: step k, with its
# metrics row written first. last.ckpt: ModelCheckpoint runs after the other callbacks, so it holds step k-1.
@pytest.mark.parametrize("crash,hook,at,ckpt,step", [
    ("KeyboardInterrupt", "on_before_backward", 3, "on_exception.ckpt", 2),
    ("KeyboardInterrupt", "on_before_backward", 1, "on_exception.ckpt", 0),
    ("RuntimeError", "on_train_batch_end", 2, "on_exception.ckpt", 2),
    ("KeyboardInterrupt", "on_train_batch_end", 2, "last.ckpt", 1)])
def test_kill_and_resume_matches_an_uninterrupted_run(straight, crash, hook, at, ckpt, step, tmp_path):
    run = tmp_path / "run"
    cfg = compose_train(BASE, run)
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": "crash_callback.CrashAt", "step": at, "exception": crash, "hook": hook}
    with pytest.raises((RuntimeError, KeyboardInterrupt, SystemExit)):
        train(cfg)
    state = torch.load(run / "checkpoints" / ckpt, weights_only=True)
    assert state["global_step"] == step
    assert all("lora_" in k for k in state["state_dict"])  # only the trainable weights are checkpointed
    assert state["embed_lm_resume"]["inexact"] is None and len(state["embed_lm_resume"]["rng"]) == 1

    metrics = train(compose_train([*BASE, f"ckpt_path={run / 'checkpoints' / ckpt}"], run))  # the same folder
    assert metrics  # returned the last logged metrics
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    want, got = losses(straight), losses(run)
    assert [s for s, _ in got] == [0, 1, 2, 3]  # every step once, with its own label
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6)  # the same batches and dropout
    a, b = adapter(straight), adapter(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_every_rank_state_is_recorded_and_auto_resume_takes_the_highest_step(straight, tmp_path):
    """Re-running a run folder resumes from the checkpoint with the highest recorded global step, whatever the files'
    ages (DeepSpeed rewrites the files inside last.ckpt/ in place, so an older on_exception.ckpt/ can look newer)."""
    from embed_lm.training.resume import find_resume_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes((straight / "checkpoints" / "last.ckpt").read_bytes())  # step 4
    state = torch.load(folder / "last.ckpt", weights_only=True)
    assert state["embed_lm_resume"]["world_size"] == 1 and state["embed_lm_data"].keys() == {"synthetic", "msmarco"}
    state["global_step"] = 2
    torch.save(state, folder / "on_exception.ckpt")  # written after last.ckpt: newer, but an earlier step
    assert find_resume_checkpoint(None, folder) == folder / "last.ckpt"
    (folder / "last.ckpt").write_bytes(b"truncated by a kill")  # unreadable: skipped, the other one serves
    assert find_resume_checkpoint(None, folder) == folder / "on_exception.ckpt"


def test_ckpt_path_to_a_folder_that_is_no_checkpoint_is_refused_before_loading(straight, tmp_path):
    from embed_lm.errors import UserError

    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"is a folder but not a checkpoint.*ckpt_path=.*checkpoints/last\.ckpt"):
        train(compose_train([*BASE, f"ckpt_path={straight}"], run))  # a run folder, not its checkpoint
    assert not (run / "embedder").exists()


@pytest.mark.parametrize("states", ["mp_rank_00_model_states.pt",  # ZeRO-2
                                    "zero_pp_rank_0_mp_rank_00_model_states.pt"])  # ZeRO-3
def test_deepspeed_checkpoint_folder_goes_through_the_config_check(straight, states, tmp_path):
    """A DeepSpeed checkpoint folder (latest + <tag>/<states> holding Lightning's state) is read for its config like a
    .ckpt file: another config is refused."""
    from embed_lm.errors import ResumeMismatchError

    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    state = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in ("state_dict", "optimizer_states")},
               folder / "checkpoint" / states)
    with pytest.raises(ResumeMismatchError, match=r"lora\.alpha: 32 -> 8"):
        train(compose_train([*BASE, "lora.alpha=8", f"ckpt_path={folder}"], tmp_path / "run"))


def test_resume_on_changed_data_is_refused_naming_the_file(straight, tmp_path):
    import shutil

    from embed_lm.errors import ResumeMismatchError

    copy = tmp_path / "synthetic"
    shutil.copytree(SAMPLE / "train" / "synthetic", copy)
    moved = [*BASE, f"data.sources.synthetic.paths={copy}/*.jsonl", "resume.allow_changes=[data.sources]",
             f"ckpt_path={straight / 'checkpoints' / 'last.ckpt'}"]  # step 4 = max_steps: nothing left to train
    train(compose_train(moved, tmp_path / "same"))  # the same contents at another path: the same data
    edited = copy / "short_long.jsonl"
    lines = edited.read_text().splitlines(keepends=True)
    edited.write_text("".join([lines[1], lines[0], *lines[2:]]))  # same size, other order
    with pytest.raises(ResumeMismatchError, match=r"short_long\.jsonl has other content.*allow_changes=\[data\]"):
        train(compose_train(moved, tmp_path / "edited"))
    assert not (tmp_path / "edited" / "embedder").exists()
    moved[-2] = "resume.allow_changes=[data.sources,data]"
    train(compose_train(moved, tmp_path / "allowed"))

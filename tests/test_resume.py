"""A run killed mid-epoch resumes from its checkpoint to the same step counter and the same weights."""

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from conftest import compose_train
from embed_lm.train import train

BASE = ["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=csv", "trainer.max_steps=4",
        "test_after_training=false", "callbacks.model_checkpoint.every_n_train_steps=1", "lora.dropout=0.1"]


def adapter(run_dir):
    return load_file(run_dir / "embedder" / "adapter" / "adapter_model.safetensors")


# on_exception.ckpt is written at the crash (step 2); last.ckpt by ModelCheckpoint, which Lightning runs after the
# other callbacks' on_train_batch_end, so the crash there pre-empts step 2's save and last.ckpt holds step 1.
@pytest.mark.parametrize("crash,ckpt,step", [("RuntimeError", "on_exception.ckpt", 2),
                                             ("KeyboardInterrupt", "on_exception.ckpt", 2),
                                             ("KeyboardInterrupt", "last.ckpt", 1)])
def test_kill_and_resume_matches_an_uninterrupted_run(crash, ckpt, step, tmp_path):
    straight = tmp_path / "straight"
    train(compose_train(BASE, straight))

    killed = tmp_path / "killed"
    cfg = compose_train(BASE, killed)
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": "crash_callback.CrashAt", "step": 2, "exception": crash}
    with pytest.raises((RuntimeError, KeyboardInterrupt, SystemExit)):
        train(cfg)
    assert (killed / "checkpoints" / ckpt).is_file()
    state = torch.load(killed / "checkpoints" / ckpt, weights_only=False)
    assert state["global_step"] == step
    assert all("lora_" in k for k in state["state_dict"])  # only the trainable weights are checkpointed

    resumed = tmp_path / "resumed"
    metrics = train(compose_train([*BASE, f"ckpt_path={killed / 'checkpoints' / ckpt}"], resumed))
    assert metrics  # returned the last logged metrics
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 4
    a, b = adapter(straight), adapter(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)

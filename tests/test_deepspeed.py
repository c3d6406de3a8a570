"""trainer=deepspeed_zero2_cpu / deepspeed_zero3_cpu (DeepSpeed ZeRO over 2 CPU processes, gloo, bf16-mixed as on
GPUs) with a bf16 tiny Mistral base + fp32 LoRA, run with the defaults (evaluation after training on): training runs,
the checkpoint folder holds exactly the LoRA tensors (ZeRO-3: really partitioned), the saved adapter is the fp32
master weights (equal to the checkpoint's, not bf16-rounded), the test metrics equal one process's evaluation of the
adapter, run=<checkpoint folder> loads like a .ckpt, and (ZeRO-3) a run resumed from the folder continues at its
step."""

import csv
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from embed_lm.inference.runs import load_run
from embed_lm.inference.checkpoint_files import zero_checkpoint_state_dict
from scale_helpers import lora_names
from strategy_helpers import one_process_metrics, small_split

pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]' (make install does)")
TASK = "Given a one-line summary of a Debian software package, retrieve the package's full description"


def train_cli(stage: int, out, *extra) -> subprocess.CompletedProcess:
    split = small_split(Path(out).parent / "split")
    cmd = [sys.executable, "-m", "embed_lm.train", "backbone=tiny_mistral", "backbone.dtype=bfloat16",
           "data=sample", "debug=smoke", f"trainer=deepspeed_zero{stage}_cpu", f"data.test.path={split}",
           "logger=csv", "data.dev=null", "data.batch_size=4", "data.max_length=32", "gradient_checkpointing=true",
           f"hydra.run.dir={out}", *extra]
    if stage == 3:  # a tiny model's weights are all below DeepSpeed's default threshold: 0 partitions them all
        cmd.append("trainer.strategy.param_persistence_threshold=0")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_and_its_checkpoint_folder_loads(stage, tmp_path):
    run = tmp_path / "run"
    proc = train_cli(stage, run, "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/ndcg@10" in json.loads((run / "done.json").read_text())["metrics"]  # tested after training
    with open(run / "csv" / "metrics.csv") as f:
        assert all(float(r["train/loss"]) > 0 for r in csv.DictReader(f) if r.get("train/loss"))

    ckpt = run / "checkpoints" / "last.ckpt"  # a folder: model states (ZeRO-3: one per rank) + optimiser shards
    shards = [torch.load(f, weights_only=False) for f in sorted((ckpt / "checkpoint").glob("*_model_states.pt"))]
    assert len(shards) == (2 if stage == 3 else 1)
    assert len(list((ckpt / "checkpoint").glob("*_optim_states.pt"))) == 2
    for shard in shards:
        assert set(shard["module"]) == lora_names()  # no frozen base weights
        assert not shard["frozen_param_shapes"] and not shard["frozen_param_fragments"]
        if stage == 3:  # partitioned: no rank holds a whole weight (persistence threshold 0)
            assert all(v.numel() == 0 for v in shard["module"].values())
    state = zero_checkpoint_state_dict(ckpt)  # DeepSpeed's own converter
    assert set(state) == lora_names()

    adapter = load_file(run / "embedder" / "adapter" / "adapter_model.safetensors")
    expected = {k.removeprefix("encoder.backbone.").replace(".default.", "."): v for k, v in state.items()}
    assert adapter.keys() == expected.keys()
    for k, v in expected.items():  # gathered before saving (ZeRO-3): the full trained tensors
        torch.testing.assert_close(adapter[k], v, rtol=0, atol=0, msg=k)
    assert max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 0
    # the fp32 master weights, not the bf16 module weights DeepSpeed computes with under bf16-mixed
    assert any((v.to(torch.bfloat16).float() != v).any() for k, v in adapter.items() if "lora_B" in k)

    after = json.loads((run / "test_metrics.json").read_text())["after"]  # the evaluation after training ran
    one = one_process_metrics(run, tmp_path / "split", TASK, dtype=torch.bfloat16)
    assert {k: after[k] for k in one} == pytest.approx(one, abs=0.02)  # bf16 compute both ways; a rank may swap

    texts = ["ZeRO partitions parameters", "and the optimiser state"]
    from_adapter, _ = load_run(run)
    from_ckpt, _ = load_run(ckpt)
    torch.testing.assert_close(from_adapter.encode(texts), from_ckpt.encode(texts))

    if stage == 3:  # the paper's set-up: resuming from the checkpoint folder continues at its step
        resumed = tmp_path / "resumed"
        mid_run = run / "checkpoints" / "step2.ckpt"  # written inside the epoch (last.ckpt marks the run's end)
        proc = train_cli(stage, resumed, "trainer.max_steps=3", f"ckpt_path={mid_run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = torch.load(resumed / "checkpoints" / "last.ckpt" / "checkpoint" /
                            "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
        assert client["global_step"] == 3
        with open(resumed / "csv" / "metrics.csv") as f:
            steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
        assert steps and min(steps) >= 2, steps  # continued from step 2, not from 0


class _Payload:
    """Unpickling this writes a file: what a crafted checkpoint would do if it were loaded as code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_deepspeed_checkpoint_folder_is_refused_and_its_payload_never_runs(tmp_path):
    from embed_lm.errors import UnsafeFileError
    from embed_lm.inference.checkpoint_files import zero_checkpoint_state_dict

    folder, marker = tmp_path / "last.ckpt", tmp_path / "pwned"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    for name in ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        torch.save({"optimizer_state_dict": _Payload(str(marker)), "module": None}, folder / "checkpoint" / name)
    with pytest.raises(UnsafeFileError, match="refused"):
        zero_checkpoint_state_dict(folder)
    assert not marker.exists()

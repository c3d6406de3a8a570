"""sweeps/table4_wandb.yaml runs: the command a W&B agent builds from the spec (wandb's own agent code, with the
process start recorded instead of spawned) starts a row, and every row of the grid composes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, compose_config

SPEC = yaml.safe_load((ROOT / "sweeps" / "table4_wandb.yaml").read_text())


def agent_command(monkeypatch, tmp_path, args: dict) -> tuple[list[str], dict]:
    """What `wandb agent` runs for one grid point: wandb.wandb_agent.Agent._command_run, process start recorded."""
    from wandb import wandb_agent

    started = {}

    class Recorded:
        def __init__(self, command=None, env=None, **kwargs):
            started.update(command=command, env=env)

    monkeypatch.setattr(wandb_agent, "AgentProcess", Recorded)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # its `python`
    agent = wandb_agent.Agent.__new__(wandb_agent.Agent)
    agent._sweep_command, agent._function = SPEC["command"], None
    agent._in_jupyter, agent._forward_signals = False, False
    agent._run_processes, agent._last_report_time = {}, None
    agent._command_run({"run_id": "abc123", "program": SPEC["program"],
                        "args": {k: {"value": v} for k, v in args.items()}})
    return started["command"], started["env"]


def test_the_agent_command_starts_the_row(monkeypatch, tmp_path):
    command, env = agent_command(monkeypatch, tmp_path, {"ablation": "default", "experiment": "table4_paper"})
    assert command[:4] == ["/usr/bin/env", "python", "-m", "embed_lm.train"] and "ablation=default" in command
    env = {**env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    # the paper profile needs Mistral-7B: the row composes, makes its folder, then stops with a user error
    assert out.returncode == 2 and "Traceback" not in out.stderr and "error:" in out.stderr, out.stderr[-2000:]
    row = tmp_path / "sweeps" / "table4" / "wandb" / "default"
    overrides = OmegaConf.load(row / ".hydra" / "overrides.yaml")
    assert {"ablation=default", "experiment=table4_paper"} <= set(overrides)
    assert OmegaConf.load(row / ".hydra" / "config.yaml").eval.suite == "mteb_en"


@pytest.mark.parametrize("row", SPEC["parameters"]["ablation"]["values"])
def test_every_grid_row_composes(row):
    args = [f"ablation={row}", f"experiment={SPEC['parameters']['experiment']['value']}"]
    cfg = compose_config("train", [*args, "paths.output_dir=/tmp/x"])
    OmegaConf.to_container(cfg, resolve=True)  # no interpolation left that the agent was meant to fill in
    assert (ROOT / "conf" / "ablation" / f"{row}.yaml").is_file()

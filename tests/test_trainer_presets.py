"""Each `*_cpu` trainer preset is its GPU preset with only the accelerator, the device count and the process-group
backend changed (issue 18 item 1): same strategy class and kwargs, same precision (bf16-mixed runs on CPU too), same
callbacks and every other key. What the CPU tests exercise is then what GPUs run."""

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_train

PAIRS = [("ddp", "ddp_cpu"), ("fsdp", "fsdp_cpu"), ("deepspeed_zero2", "deepspeed_zero2_cpu"),
         ("deepspeed_zero3", "deepspeed_zero3_cpu")]
ALLOWED = {("trainer", "accelerator"), ("trainer", "devices"), ("trainer", "strategy", "process_group_backend")}


def flat(node, path=()) -> dict[tuple, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat(value, (*path, key)).items()}
    return {path: node}


def differences(gpu: str, cpu: str) -> dict[tuple, tuple]:
    a, b = (flat(OmegaConf.to_container(compose_train([f"trainer={t}"]), resolve=True)) for t in (gpu, cpu))
    return {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@pytest.mark.parametrize("gpu,cpu", PAIRS)
def test_cpu_preset_is_the_gpu_preset_on_cpu_processes(gpu, cpu):
    diff = differences(gpu, cpu)
    assert set(diff) <= ALLOWED, {".".join(k): v for k, v in diff.items() if k not in ALLOWED}
    assert diff[("trainer", "accelerator")] == ("gpu", "cpu")
    assert diff[("trainer", "strategy", "process_group_backend")] == (None, "gloo")
    assert compose_train([f"trainer={cpu}"]).trainer.precision == "bf16-mixed"


def test_the_check_sees_a_difference():
    """The comparison itself fails on a changed strategy kwarg or precision (it can fail)."""
    a = flat(OmegaConf.to_container(compose_train(["trainer=fsdp"]), resolve=True))
    b = flat(OmegaConf.to_container(compose_train(["trainer=fsdp_cpu", "trainer.precision=32-true",
                                                   "trainer.strategy.sharding_strategy=NO_SHARD"]), resolve=True))
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} - ALLOWED
    assert changed == {("trainer", "precision"), ("trainer", "strategy", "sharding_strategy")}


@pytest.mark.parametrize("gpu,cpu", PAIRS)
def test_both_presets_build_the_same_strategy_class(gpu, cpu, monkeypatch):
    if "deepspeed" in gpu:
        pytest.importorskip("deepspeed")
    strategies = [instantiate(compose_train([f"trainer={t}"]).trainer.strategy) for t in (gpu, cpu)]
    assert type(strategies[0]) is type(strategies[1])
    assert [s.process_group_backend for s in strategies] == [None, "gloo"]

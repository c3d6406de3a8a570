"""make gpu-check end to end at the tiny size on CPU (2 gloo processes for its FSDP section): the JSON holds every
section with consistent figures (no speed assertions)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def reference_model_flops(shape: dict, sequences: int, seq: int) -> float:
    """Forward + backward (= one more forward: frozen weights get no weight gradients) of every sequence."""
    kv = shape["hidden"] // shape["heads"] * shape["kv_heads"]
    per_layer = shape["hidden"] * (2 * shape["hidden"] + 2 * kv) + 3 * shape["hidden"] * shape["ffn"] \
        + 2 * shape["hidden"]
    params = shape["layers"] * per_layer + shape["vocab"] * shape["hidden"] + shape["hidden"]
    dense = 2 * params * sequences * seq
    attention = 4 * seq * seq * shape["hidden"] * shape["layers"] * sequences
    return 2 * (dense + attention)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--fsdp-procs", "2", "--peak-tflops", "1",
                    "--out", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_section_is_there_with_consistent_figures(result):
    rows = {r["section"]: r for r in result["rows"]}
    variants = sorted(p.stem for p in (ROOT / "conf/passkey_variant").glob("*.yaml"))
    assert set(rows) == {"plain", "cached", "fsdp"} | {f"passkey/{v}" for v in variants}
    seq, shape = result["model"]["seq_len"], result["model"]["shape"]
    for name in ("plain", "cached", "fsdp"):
        r = rows[name]
        sequences = r["batch"] * (2 + result["model"]["negatives_per_query"])  # per process
        assert r["tokens"] == sequences * seq * r["devices"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"])
        assert r["model_flops"] == pytest.approx(reference_model_flops(shape, sequences, seq))
        assert r["mfu"] == pytest.approx(r["model_flops"] / r["step_s"] / 1e12)  # --peak-tflops 1
        assert math.isfinite(r["loss"]) and r["plan"]["tokens_per_s"] > 0 and r["plan"]["peak_memory_gb"] > 0
    assert rows["cached"]["global_batch"] == 8 and rows["cached"]["chunk"] == 4
    assert rows["fsdp"]["devices"] == 2 and rows["fsdp"]["global_batch"] == 2 * rows["fsdp"]["batch"]
    for v in variants:
        r = rows[f"passkey/{v}"]
        assert r["tokens"] == 256 and r["tokens_per_s"] == pytest.approx(256 / r["step_s"])
        picks = yaml.safe_load((ROOT / "conf/passkey_variant" / f"{v}.yaml").read_text())["defaults"]
        window = next(val for entry in picks for key, val in entry.items() if "sliding_window" in key)
        expected = yaml.safe_load((ROOT / "conf/passkey_sliding_window" / f"{window}.yaml").read_text())
        assert r["sliding_window"] == expected["sliding_window"]


@pytest.mark.slow
def test_the_batch_search_doubles_up_to_the_largest_fit(result):
    trials = result["search"]["trials"]
    assert [t["batch"] for t in trials] == [1, 2, 4]  # --tiny: max batch 4, nothing runs out of memory on CPU
    assert all(t["fits"] for t in trials)
    assert result["search"]["largest"] == max(t["batch"] for t in trials if t["fits"])
    assert next(r for r in result["rows"] if r["section"] == "plain")["batch"] == result["search"]["largest"]
    assert result["device"]["type"] == "cpu" and result["skipped"] == {}  # nothing cut by the time budget
    assert next(r for r in result["rows"] if r["section"] == "cached")["wanted_global_batch"] == 8


def test_the_cached_batch_is_halved_only_when_it_would_overrun_the_budget():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import cached_batch_in_budget

    # 2048 queries x 3 sequences x 512 tokens x 4/3 passes = 4.19M token-passes: 419 s at 10k tokens/s
    assert cached_batch_in_budget(2048, 420, 10_000, 512) == 2048
    assert cached_batch_in_budget(2048, 400, 10_000, 512) == 1024
    assert cached_batch_in_budget(2048, 1, 10_000, 512) == 4  # 4 x 3 x 512 x 4/3 = 8,192: 0.82 s
    assert cached_batch_in_budget(2048, 0.01, 10_000, 512) == 1  # never below one query

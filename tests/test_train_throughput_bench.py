"""benchmarks/train_throughput.py --quick runs end to end: both losses, both implementations, two alternating
rounds, every figure present, and the same first-batch loss as sentence-transformers (speed is not asserted)."""

import importlib.util

import torch

from conftest import ROOT


def test_quick_comparison_with_sentence_transformers(tmp_path):
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CI-sized tensors: a second thread only spins on a loaded machine
    try:
        results = bench.main(["--quick", "--json", str(tmp_path / "figures.json")])
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"plain", "cached"} and (tmp_path / "figures.json").is_file()
    for mode, r in results.items():
        assert [x["impl"] for x in r["runs"]] == ["ours", "st", "st", "ours"]  # alternating order
        assert r["first_loss_diff"] < 1e-5, mode
        for x in r["runs"]:
            assert x["examples_per_s"] > 0 and x["peak_rss_mb"] > 0
            assert 0 < x["real_tokens_per_step"] <= x["computed_tokens_per_step"]
        ours = [x for x in r["runs"] if x["impl"] == "ours"]
        theirs = [x for x in r["runs"] if x["impl"] == "st"]
        assert ours[0]["real_tokens_per_step"] == theirs[0]["real_tokens_per_step"]  # the same batches
        assert r["ratio"] > 0

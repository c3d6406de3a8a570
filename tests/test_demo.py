"""The demo experiment (what `make demo` runs) at reduced size: real all-MiniLM-L6-v2, offline, on CPU."""

import json

import pytest

from conftest import compose_train
from embed_lm.train import train


@pytest.mark.slow
def test_demo_beats_the_base_model_as_its_authors_use_it(tmp_path):
    cfg = compose_train(["experiment=demo", "logger=csv", "trainer.limit_train_batches=25",
                         "optimizer.warmup_steps=5", "data.test.path=${paths.sample_dir}/dev", "data.test.split=dev",
                         "trainer.val_check_interval=1.0", "data.dev=null",
                         "data.extra_tests=null"], tmp_path)
    after = train(cfg)
    result = json.loads((tmp_path / "test_metrics.json").read_text())
    base = result["base"]  # mean pooling, no instruction: the demo's own format, so the same pass as `before`
    assert base == result["before"]
    assert set(base) == set(after) == {"test/ndcg@10", "test/mrr@10", "test/recall@100"}
    assert after["test/ndcg@10"] > base["test/ndcg@10"], result
    assert result["gain_vs_base"]["test/ndcg@10"] == pytest.approx(after["test/ndcg@10"] - base["test/ndcg@10"])
    assert (tmp_path / "embedder" / "adapter" / "adapter_config.json").is_file()

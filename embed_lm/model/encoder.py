"""TextEncoder: backbone (with LoRA) + pooling + L2 normalisation, the model that turns a TokenizedBatch into
unit-norm embeddings (B, D).

Position ids are computed from the attention mask (cumsum - 1), so a text gets the same positions under left and
right padding, and its embedding does not depend on the padding side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embed_lm.model.collator import TokenizedBatch
from embed_lm.model.pooling import Pooling


class TextEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: Pooling, normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, batch: TokenizedBatch) -> Tensor:
        mask = batch.attention_mask  # (B, L)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
        out = self.backbone(input_ids=batch.input_ids, attention_mask=mask, position_ids=position_ids)
        hidden = out.last_hidden_state  # (B, L, D)
        emb = self.pooling(hidden, mask, batch.instruction_mask).float()  # (B, D)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    @torch.inference_mode()
    def encode(self, batch: TokenizedBatch) -> Tensor:
        return self.forward(batch)

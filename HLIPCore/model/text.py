"""Text tower: a Hugging Face BERT (BiomedBERT / CXR-BERT layout) with [CLS] pooling and a linear projection.

Poolers (open_clip's names): `cls_last_hidden_state_pooler` (the released HLIP models) or `mean_pooler` (masked
mean of the last hidden states). A BERT trained from scratch on a few hundred reports learns CLIP far faster with
mean pooling: every word's embedding reaches the output from the first step, while [CLS] pooling must first learn
to gather the words that matter (measured on the phantom reports with fixed, ideal image features: mean pooling
maps four of the five Pub-Brain-5 prompts to their class within 50 steps; [CLS] pooling none within 400).

Parameter names equal open_clip's `HFTextEncoder` (`transformer.*`, `proj.weight`) so official HLIP state
dicts load strictly. The architecture comes from an inline BERT config (no download needed to build the model)
or from a hub name / local folder.
"""
from typing import Optional

import torch
import torch.nn as nn
from transformers import AutoConfig, BertConfig, BertModel


POOLERS = ("cls_last_hidden_state_pooler", "mean_pooler")


def bert_config(hf_config: Optional[dict] = None, hf_model_name: Optional[str] = None) -> BertConfig:
    if hf_config:
        return BertConfig(**hf_config)
    if hf_model_name:
        return AutoConfig.from_pretrained(hf_model_name)
    raise ValueError("text tower needs `hf_config` or `hf_model_name`")


class HFTextEncoder(nn.Module):
    def __init__(self, output_dim: int, hf_config: Optional[dict] = None, hf_model_name: Optional[str] = None,
                 pooler_type: str = "cls_last_hidden_state_pooler", proj_type: str = "linear",
                 pretrained: bool = False, **_ignored):
        super().__init__()
        if pooler_type not in POOLERS or proj_type != "linear":
            raise ValueError(f"unsupported text pooler/projection: {pooler_type}/{proj_type} "
                             f"(poolers: {', '.join(POOLERS)}; projection: linear)")
        self.pooler_type = pooler_type
        if pretrained and hf_model_name:
            self.transformer = BertModel.from_pretrained(hf_model_name, add_pooling_layer=False)
        else:
            self.transformer = BertModel(bert_config(hf_config, hf_model_name), add_pooling_layer=False)
        self.config = self.transformer.config
        self.proj = nn.Linear(self.config.hidden_size, output_dim, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        attention_mask = (input_ids != self.config.pad_token_id).long()
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooler_type == "mean_pooler":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        return self.proj(pooled)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = False):
        """Freeze the transformer except its last `unlocked_layers` layers (and LayerNorms unless asked)."""
        for name, param in self.transformer.named_parameters():
            is_norm = "LayerNorm" in name or "layer_norm" in name
            layer = name.split("encoder.layer.")[1].split(".")[0] if "encoder.layer." in name else None
            trainable = layer is not None and int(layer) >= self.config.num_hidden_layers - unlocked_layers
            param.requires_grad = trainable or (is_norm and not freeze_layer_norm)

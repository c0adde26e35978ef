"""Adapter for transformers' BERT and RoBERTa encoders (and their sequence-classification heads)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel, RobertaModel, RobertaPreTrainedModel

from trimformer.adapters.base import Adapter, UnsupportedModelError, register
from trimformer.engine.view import BlockView

_HEAD_CLASSES = ("BertForSequenceClassification", "RobertaForSequenceClassification")


def text_positions(config) -> int | None:
    """How many tokens a BERT-family model's position embeddings hold (RoBERTa-style models start their positions
    after the padding index); None when the config does not say."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= (config.pad_token_id or 0) + 1
    return positions


def _base_model(model: nn.Module) -> nn.Module:
    if isinstance(model, (BertModel, RobertaModel)):
        return model
    return getattr(model, "bert", None) or model.roberta


class BertFamilyAdapter(Adapter):
    name = "bert"
    task = "text"

    def supports(self, model: nn.Module) -> bool:
        return isinstance(model, (BertPreTrainedModel, RobertaPreTrainedModel))

    def validate(self, model: nn.Module) -> None:
        kind = type(model).__name__
        if not isinstance(model, (BertModel, RobertaModel)) and kind not in _HEAD_CLASSES:
            raise UnsupportedModelError(
                f"{kind} is not supported: use BertModel/RobertaModel or *ForSequenceClassification"
            )
        cfg = model.config
        if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
            raise UnsupportedModelError(f"{kind}: decoder / cross-attention configurations are not supported")
        position_type = getattr(cfg, "position_embedding_type", "absolute")
        if position_type not in (None, "absolute"):
            raise UnsupportedModelError(
                f"{kind}: position_embedding_type={position_type!r} (relative attention) is not supported"
            )
        if kind in _HEAD_CLASSES and getattr(cfg, "problem_type", None) == "multi_label_classification":
            raise UnsupportedModelError(f"{kind}: multi-label classification is not supported yet")

    def blocks(self, model: nn.Module) -> list[BlockView]:
        views = []
        for layer in _base_model(model).encoder.layer:
            attn = layer.attention
            views.append(BlockView(
                query=attn.self.query, key=attn.self.key, value=attn.self.value,
                attn_out=attn.output.dense, mlp_in=layer.intermediate.dense, mlp_out=layer.output.dense,
                activation=layer.intermediate.intermediate_act_fn,
                norm_attn=attn.output.LayerNorm, norm_mlp=layer.output.LayerNorm,
                num_heads=attn.self.num_attention_heads, pre_norm=False,
                attn_dropout=attn.self.dropout, attn_out_dropout=attn.output.dropout,
                hidden_dropout=layer.output.dropout,
            ))
        return views

    def check_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor | None]) -> None:
        input_ids, attention_mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if input_ids is None:
            raise ValueError("text models need input_ids (tokenize the texts first)")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, length>0], got {tuple(input_ids.shape)}")
        positions = text_positions(model.config)
        if positions is not None and input_ids.shape[1] > positions:
            raise ValueError(f"inputs of {input_ids.shape[1]} tokens are longer than the model's {positions} "
                             f"positions: tokenize with truncation=True, max_length={positions} or less")
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError("attention_mask must have the shape of input_ids")
            if not bool(attention_mask[:, 0].all()):
                raise ValueError("the first token of every row must be real ([CLS]): use right padding "
                                 "(tokenizer.padding_side = 'right') and no empty texts")

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
        hidden = _base_model(model).embeddings(input_ids=input_ids, token_type_ids=inputs.get("token_type_ids"))
        return hidden, real

    def head(self, model: nn.Module, hidden: torch.Tensor, alive: torch.Tensor) -> dict[str, torch.Tensor]:
        base = _base_model(model)
        if model is base:
            pooled = base.pooler(hidden) if base.pooler is not None else None
            return {"last_hidden_state": hidden, "pooler_output": pooled}
        if hasattr(model, "bert"):  # BertForSequenceClassification: pooler -> dropout -> linear
            return {"logits": model.classifier(model.dropout(base.pooler(hidden)))}
        return {"logits": model.classifier(hidden)}  # RoBERTa's head reads position 0 itself


register(BertFamilyAdapter())

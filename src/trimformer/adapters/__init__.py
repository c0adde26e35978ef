"""Model-family adapters: how to read blocks, embeddings and heads out of a model."""

from trimformer.adapters.base import Adapter, UnsupportedModelError, adapter_for
from trimformer.adapters.bert import BertFamilyAdapter
from trimformer.adapters.timm_vit import TimmViTAdapter
from trimformer.adapters.vit import ViTFamilyAdapter

__all__ = ["Adapter", "BertFamilyAdapter", "TimmViTAdapter", "UnsupportedModelError", "ViTFamilyAdapter",
           "adapter_for"]

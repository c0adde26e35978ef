"""Pruning methods: configs and the policies they build."""

from trimformer.methods.ltp import LTPConfig, LTPPolicy
from trimformer.methods.topk import TopKConfig, TopKPolicy

__all__ = ["LTPConfig", "LTPPolicy", "TopKConfig", "TopKPolicy"]

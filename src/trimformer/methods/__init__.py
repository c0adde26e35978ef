"""Pruning methods: configs and the policies they build."""

from trimformer.methods.asvit import ASViTConfig, ASViTPolicy
from trimformer.methods.evit import EViTConfig, EViTPolicy
from trimformer.methods.ltp import LTPConfig, LTPPolicy
from trimformer.methods.sait import SaiTConfig, SaiTPolicy
from trimformer.methods.tome import ToMeConfig, ToMePolicy
from trimformer.methods.topk import TopKConfig, TopKPolicy

__all__ = ["ASViTConfig", "ASViTPolicy", "EViTConfig", "EViTPolicy", "LTPConfig", "LTPPolicy", "SaiTConfig",
           "SaiTPolicy", "ToMeConfig", "ToMePolicy", "TopKConfig", "TopKPolicy"]

"""Pruning methods: each module holds a config and the policy it builds; the table below registers them."""

from trimformer.methods.asvit import ASViTConfig, ASViTPolicy
from trimformer.methods.evit import EViTConfig, EViTPolicy
from trimformer.methods.ltp import LTPConfig, LTPPolicy
from trimformer.methods.registry import MethodSpec, method_named, method_of, register_method, registered_methods
from trimformer.methods.sait import SaiTConfig, SaiTPolicy
from trimformer.methods.tome import ToMeConfig, ToMePolicy
from trimformer.methods.topk import TopKConfig, TopKPolicy

register_method(MethodSpec("ltp", LTPConfig, LTPPolicy, tasks=("text",)))
register_method(MethodSpec("topk", TopKConfig, TopKPolicy, tasks=("text",)))
register_method(MethodSpec("sait", SaiTConfig, SaiTPolicy, tasks=("vision",)))
register_method(MethodSpec("asvit", ASViTConfig, ASViTPolicy, tasks=("vision",)))
register_method(MethodSpec("evit", EViTConfig, EViTPolicy, tasks=("text", "vision"), trainable=False))
register_method(MethodSpec("tome", ToMeConfig, ToMePolicy, tasks=("text", "vision"), trainable=False))

__all__ = ["ASViTConfig", "ASViTPolicy", "EViTConfig", "EViTPolicy", "LTPConfig", "LTPPolicy", "MethodSpec",
           "SaiTConfig", "SaiTPolicy", "ToMeConfig", "ToMePolicy", "TopKConfig", "TopKPolicy", "method_named",
           "method_of", "register_method", "registered_methods"]

"""Pruning methods: each module holds a config, the policy it builds and its training recipe; the table below
registers them."""

from trimformer.methods.asvit import ASViTConfig, ASViTPolicy, fit_asvit
from trimformer.methods.evit import EViTConfig, EViTPolicy
from trimformer.methods.ltp import LTPConfig, LTPPolicy, fit_ltp
from trimformer.methods.registry import MethodSpec, method_named, method_of, register_method, registered_methods
from trimformer.methods.sait import SaiTConfig, SaiTPolicy, fit_sait
from trimformer.methods.tome import ToMeConfig, ToMePolicy
from trimformer.methods.topk import TopKConfig, TopKPolicy, fit_topk

register_method(MethodSpec("ltp", LTPConfig, LTPPolicy, tasks=("text",), fit=fit_ltp))
register_method(MethodSpec("topk", TopKConfig, TopKPolicy, tasks=("text",), fit=fit_topk))
register_method(MethodSpec("sait", SaiTConfig, SaiTPolicy, tasks=("vision",), fit=fit_sait))
register_method(MethodSpec("asvit", ASViTConfig, ASViTPolicy, tasks=("vision",), fit=fit_asvit))
register_method(MethodSpec("evit", EViTConfig, EViTPolicy, tasks=("text", "vision")))
register_method(MethodSpec("tome", ToMeConfig, ToMePolicy, tasks=("text", "vision")))

__all__ = ["ASViTConfig", "ASViTPolicy", "EViTConfig", "EViTPolicy", "LTPConfig", "LTPPolicy", "MethodSpec",
           "SaiTConfig", "SaiTPolicy", "ToMeConfig", "ToMePolicy", "TopKConfig", "TopKPolicy", "method_named",
           "method_of", "register_method", "registered_methods"]

"""Structured (channel) pruning of CNNs on Torch-Pruning: physically smaller models under a FLOPs budget.

Layers, bottom up (each a short module):

- :mod:`~trimformer.structured.graph`: channel groups from Torch-Pruning's dependency graph, named by their root
  layer; a *structure* (group name -> kept channel indices) removed physically (``prune_channels_``);
- :mod:`~trimformer.structured.budget`: MACs counted by ``tp.utils.count_ops_and_params``; the bisection of a
  global width factor to a FLOPs budget (met within a tolerance, ``BudgetError`` when unreachable);
- :mod:`~trimformer.structured.importance`: criteria that rank channels (``l1``, ``bn_scale``, ``random``);
- :mod:`~trimformer.structured.calibration`: batch-norm recalibration on a few batches;
- :mod:`~trimformer.structured.record` / :mod:`~trimformer.structured.store`: a pruned copy carrying the record
  that rebuilds it; save / load as safetensors + ``structured.json``;
- :mod:`~trimformer.structured.config`: the methods' configs (``AdaPrunerConfig``);
- :mod:`~trimformer.structured.ofar` (with ``ofar_config``, ``ofar_masks``, ``ofar_store``): OFARPruning, one
  training for a family of sub-networks over FLOPs budgets and input resolutions.
"""

from trimformer.structured.budget import BudgetError, BudgetResult, WidthCost, count_macs, search_budget
from trimformer.structured.calibration import recalibrate_batchnorm_
from trimformer.structured.config import AdaPrunerConfig
from trimformer.structured.graph import ChannelGroup, StructureError, channel_groups, prune_channels_
from trimformer.structured.importance import CRITERIA, channel_scores, keep_top
from trimformer.structured.ofar import OFARResult, ofar_prune
from trimformer.structured.ofar_config import OFARConfig
from trimformer.structured.ofar_store import load_ofar, save_ofar
from trimformer.structured.record import pruned_copy, structure_record
from trimformer.structured.store import load_structured, save_structured

__all__ = ["AdaPrunerConfig", "BudgetError", "BudgetResult", "CRITERIA", "ChannelGroup", "StructureError",
           "WidthCost", "channel_groups", "channel_scores", "count_macs", "keep_top", "load_structured",
           "prune_channels_", "pruned_copy", "recalibrate_batchnorm_", "save_structured", "search_budget",
           "structure_record", "OFARConfig", "OFARResult", "ofar_prune", "save_ofar", "load_ofar"]

"""The fine-tuning recipe of each task, as plain data (the ``TrainConfig`` fields that differ from its defaults):
read by :func:`trimformer.train.finetune.finetune_config` and by the CLI's ``--help`` without importing torch.

vision: the DINOv2 ViT-S/14 recipe first run in ``benchmarks/finetune_vit_fmnist.py``: backbone lr 5e-5, new head
1e-3, weight decay 0.05 on weight matrices only, 10% linear warm-up then cosine decay, gradient norm clipped at 1.
"""

from types import MappingProxyType

FINETUNE_RECIPES = MappingProxyType({
    "text": MappingProxyType({"lr": 1e-4}),
    "vision": MappingProxyType({"lr": 5e-5, "head_lr": 1e-3, "weight_decay": 0.05, "warmup_ratio": 0.1,
                                "schedule": "cosine", "max_grad_norm": 1.0}),
})

"""Distillation losses shared by the recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """T^2 KL(teacher || student) of the softened class distributions, mean over the batch. [B, C] -> scalar."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2

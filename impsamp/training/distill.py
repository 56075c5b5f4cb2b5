"""Distillation during fine-tuning: a teacher's next-token distributions guide the student.

    loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(teacher_T || student_T)

with p_T = softmax(logits / T) (Hinton et al.'s T^2 keeps the term's gradients on the scale of the
cross-entropy's). alpha = 0 is plain fine-tuning, bit for bit (the teacher is not run). The teacher
is a finished run with the student's tokenizer, held frozen in eval mode on the student's device;
its forward passes are counted in the run's costs (`teacher`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(teacher_T || student_T), averaged over tokens (float32)."""
    v = student_logits.size(-1)
    s = F.log_softmax(student_logits.float().view(-1, v) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().view(-1, v) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


class Distilled(nn.Module):
    """The student's forward with the distillation loss mixed in (what the fine-tuning loop calls)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float, temperature: float):
        super().__init__()
        self.student, self.alpha, self.temperature = student, alpha, temperature
        self.teacher = [teacher]  # a list: not a submodule (not trained, not in the student's state)

    def forward(self, x: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
        if self.alpha == 0:
            return self.student(x, y, **kw)
        logits = self.student(x)
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        with torch.no_grad():
            target = self.teacher[0](x)
        return (1 - self.alpha) * ce + self.alpha * distillation_loss(logits, target, self.temperature)

    def no_sync(self):
        """DDP's no_sync of the wrapped student (gradient accumulation), or nothing without DDP."""
        return self.student.no_sync() if hasattr(self.student, "no_sync") else contextlib.nullcontext()

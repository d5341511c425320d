"""Exponential moving average of model weights (the weights we deploy)."""
from __future__ import annotations

import copy

import torch


class ModelEma:
    """Keeps an averaged copy of a model; decay ramps up as min(decay, (1+n)/(10+n)) over update count n."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        msd = model.state_dict()
        for k, ema_v in self.module.state_dict().items():
            v = msd[k].detach()
            if ema_v.dtype.is_floating_point:
                ema_v.mul_(d).add_(v.to(ema_v.dtype), alpha=1.0 - d)
            else:
                ema_v.copy_(v)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state, updates: int = 0) -> None:
        self.module.load_state_dict(state)
        self.updates = int(updates)

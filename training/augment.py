"""Batch data augmentation on already-normalised torch tensors [B, C, S, S].

Inputs come from `prepare_batch` (values in [lo, hi] = [(0-mean)/std, (1-mean)/std]); every op here
keeps values inside that range so the model never sees pixels a real face could not produce.
All ops are vectorised over the batch and run on whatever device the batch is on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    pad: int = 4                 # random crop with this much reflect padding per side (pixels at model size)
    hflip: float = 0.5           # probability of a horizontal flip
    affine_p: float = 0.5        # probability of a random affine (rotation + scale + translation)
    rotate_deg: float = 10.0     # rotation range +-deg
    scale: Tuple[float, float] = (0.9, 1.1)
    translate: float = 0.0       # extra translation as a fraction of the size (crop already translates)
    erase_p: float = 0.25        # random erasing probability per image
    erase_area: Tuple[float, float] = (0.02, 0.15)
    erase_ratio: Tuple[float, float] = (0.3, 3.3)
    mix_p: float = 0.0           # probability that a batch is mixed (mixup or cutmix)
    mixup_alpha: float = 0.2     # Beta(alpha, alpha) for mixup; 0 disables mixup
    cutmix_alpha: float = 1.0    # Beta(alpha, alpha) for cutmix; 0 disables cutmix

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown augmentation keys {unknown}; known: {sorted(known)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kwargs)


def random_crop(x: torch.Tensor, pad: int, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Reflect-pad by `pad` and cut a random S x S window per image."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]          # [B, H]
    cols = ox[:, None] + torch.arange(w, device=x.device)[None, :]          # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, p: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    if p <= 0:
        return x
    mask = (torch.rand(x.shape[0], generator=gen) < p).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Rotation, isotropic scale and translation with border padding (values stay in range)."""
    if cfg.affine_p <= 0:
        return x
    b = x.shape[0]
    apply = torch.rand(b, generator=gen) < cfg.affine_p
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
    lo, hi = cfg.scale
    s = lo + torch.rand(b, generator=gen) * (hi - lo)
    t = (torch.rand(b, 2, generator=gen) * 2 - 1) * cfg.translate * 2  # normalised coords span 2
    ang = torch.where(apply, ang, torch.zeros_like(ang))
    s = torch.where(apply, s, torch.ones_like(s))
    t = torch.where(apply[:, None], t, torch.zeros_like(t))
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s   # sampling grid: inverse transform
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(apply.to(x.device)[:, None, None, None], out, x)


def random_erase(x: torch.Tensor, cfg: AugmentConfig, value_range: Tuple[float, float],
                 gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replace one random rectangle per chosen image by uniform noise within value_range."""
    if cfg.erase_p <= 0:
        return x
    b, c, h, w = x.shape
    apply = torch.rand(b, generator=gen) < cfg.erase_p
    area = (cfg.erase_area[0] + torch.rand(b, generator=gen) * (cfg.erase_area[1] - cfg.erase_area[0])) * h * w
    log_r = math.log(cfg.erase_ratio[0]) + torch.rand(b, generator=gen) * (math.log(cfg.erase_ratio[1]) - math.log(cfg.erase_ratio[0]))
    ratio = torch.exp(log_r)
    eh = torch.sqrt(area * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(area / ratio).round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=gen) * (h - eh + 1).float()).long()
    x0 = (torch.rand(b, generator=gen) * (w - ew + 1).float()).long()
    ys = torch.arange(h)[None, :]
    xs = torch.arange(w)[None, :]
    my = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])
    mx = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])
    mask = (my[:, :, None] & mx[:, None, :] & apply[:, None, None])[:, None].to(x.device)
    lo, hi = value_range
    noise = (torch.rand(x.shape, generator=gen) * (hi - lo) + lo).to(x.device, x.dtype)
    return torch.where(mask, noise, x)


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, gen: Optional[torch.Generator] = None):
    """Mixup or cutmix the batch with its own permutation. Returns (x, y_a, y_b, lam); lam=1 means no mix."""
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if cfg.mix_p <= 0 or not (use_mixup or use_cutmix) or torch.rand(1, generator=gen).item() >= cfg.mix_p:
        return x, y, y, 1.0
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    cutmix = use_cutmix and (not use_mixup or torch.rand(1, generator=gen).item() < 0.5)
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample().item())
    if not cutmix:
        return x * lam + x[perm] * (1 - lam), y, y[perm], lam
    h, w = x.shape[2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return out, y, y[perm], lam


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, value_range: Tuple[float, float],
                  gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Geometric + erasing augmentation (no label mixing); output has x's shape and stays in value_range."""
    with torch.no_grad():
        x = random_crop(x, cfg.pad, gen)
        x = random_hflip(x, cfg.hflip, gen)
        x = random_affine(x, cfg, gen)
        x = random_erase(x, cfg, value_range, gen)
    return x

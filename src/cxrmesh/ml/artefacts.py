"""Real-world artefacts for training: what real radiographs carry and the synthetic films lack.

The models train on synthetic films: the whole torso on black, nothing else in the field. Real
films (the pydicom-data RG1 among them, docs/real-radiographs.md) have the arms beside the chest,
burned-in text and side markers, ECG leads, lines and tubes, tight collimation, blur from motion
or a soft kernel, and children's proportions. A model that never saw these calls bright things
beside the chest "lung" and leaves holes under a lead. Each artefact here is drawn on a random
share of the batch, with the labels kept exact: nothing drawn is lung, and a collimated band hides
what was under it, so the lung labels there become background.

All tensors are (N, 1, H, W) display values in [0, 1] on any device; labels are (N, H, W) longs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

P_BLUR, P_LINES, P_TEXT, P_ARMS, P_COLLIMATION = 0.25, 0.3, 0.3, 0.3, 0.25


def _chosen(n: int, p: float, dev: torch.device) -> torch.Tensor:
    return torch.rand(n, device=dev) < p


def _grid(h: int, w: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in [0, 1] (y, x), each (1, H, W)."""
    y = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
    x = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
    return y[None, :, None].expand(1, h, w), x[None, None, :].expand(1, h, w)


def blur(x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """Gaussian blur (sigma 0.6-1.6 px, one sigma per batch) on the picked films: motion, soft kernels."""
    if not pick.any():
        return x
    sigma = 0.6 + float(torch.rand(())) * 1.0
    r = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()
    sub = x[pick]
    sub = F.conv2d(F.pad(sub, (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, 7))
    sub = F.conv2d(F.pad(sub, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, 7, 1))
    out = x.clone()
    out[pick] = sub
    return out


def lines(x: torch.Tensor, pick: torch.Tensor, curves: int = 3, points: int = 600) -> torch.Tensor:
    """Thin bright curves across the film: ECG leads, tubes and catheters (drawn over the lungs too).

    Quadratic Bezier curves sampled densely, scattered into a stroke map and widened by a max-pool
    (1-3 px): cheap on any device, unlike a distance field.
    """
    n, _, h, w = x.shape
    if not pick.any():
        return x
    dev = x.device
    ends = torch.rand(n, curves, 3, 2, device=dev) * 1.2 - 0.1  # (y, x) of start, control, end
    t = torch.linspace(0, 1, points, device=dev)[None, None, :, None]
    p0, p1, p2 = ends[:, :, None, 0], ends[:, :, None, 1], ends[:, :, None, 2]
    path = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # (N, C, P, 2)
    shown = torch.rand(n, curves, 1, device=dev) < 0.6  # one to three curves per film
    shown[:, 0] = True
    row, col = (path[..., 0] * h).long(), (path[..., 1] * w).long()
    ok = (row >= 0) & (row < h) & (col >= 0) & (col < w) & shown
    film = torch.arange(n, device=dev)[:, None, None].expand_as(row)
    stroke = torch.zeros(n, h, w, device=dev)
    stroke[film[ok], row[ok], col[ok]] = 1.0
    k = 1 + 2 * int(torch.randint(0, 2, ()))  # 1 or 3 px wide
    stroke = F.max_pool2d(stroke[:, None], k, stride=1, padding=k // 2)
    level = 0.55 + torch.rand(n, 1, 1, 1, device=dev) * 0.45
    drawn = torch.maximum(x, stroke * level)
    return torch.where(pick[:, None, None, None], drawn, x)


def text(x: torch.Tensor, pick: torch.Tensor, glyphs: int = 10) -> torch.Tensor:
    """Burned-in text and side markers: rows of small bright blocks near the film's edges."""
    n, _, h, w = x.shape
    if not pick.any():
        return x
    dev = x.device
    gy, gx = _grid(h, w, dev)
    # one line of glyphs per film, in a corner band (top or bottom, left or right), plus one marker
    row = torch.where(torch.rand(n, device=dev) < 0.5, 0.04, 0.9) + torch.rand(n, device=dev) * 0.05
    start = torch.where(torch.rand(n, device=dev) < 0.5, 0.03, 0.6) + torch.rand(n, device=dev) * 0.08
    gw, gh = 0.018 + torch.rand(n, device=dev) * 0.012, 0.03 + torch.rand(n, device=dev) * 0.02
    k = torch.arange(glyphs, device=dev)
    x0 = start[:, None] + k[None] * gw[:, None] * 1.4  # (N, G)
    present = torch.rand(n, glyphs, device=dev) < 0.8
    inside = (
        (gx[None] >= x0[..., None, None])
        & (gx[None] < (x0 + gw[:, None])[..., None, None])
        & (gy[None] >= row[:, None, None, None])
        & (gy[None] < (row + gh)[:, None, None, None])
        & present[..., None, None]
    ).any(dim=1, keepdim=True)
    mx, my = torch.rand(n, device=dev) * 0.8 + 0.1, torch.rand(n, device=dev) * 0.3 + 0.05
    ms = 0.012 + torch.rand(n, device=dev) * 0.02
    marker = (
        ((gx - mx[:, None, None]).abs() < ms[:, None, None])
        & ((gy - my[:, None, None]).abs() < ms[:, None, None])
    )[:, None]
    level = 0.85 + torch.rand(n, 1, 1, 1, device=dev) * 0.15
    drawn = torch.where(inside | marker, level, x)
    return torch.where(pick[:, None, None, None], drawn, x)


def arms(x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """Soft bright vertical bands at the lateral edges: arms and shoulders beside the chest."""
    n, _, h, w = x.shape
    if not pick.any():
        return x
    dev = x.device
    gy, gx = _grid(h, w, dev)
    edge = torch.minimum(gx, 1 - gx)[None]  # distance to the nearer side, (1, 1, H, W)
    reach = 0.05 + torch.rand(n, 1, 1, 1, device=dev) * 0.1
    soft = torch.sigmoid((reach - edge) / 0.01)
    # an arm: brighter in its middle (bone), fading towards the bottom of the film
    bone = torch.exp(-(((edge - reach / 2) / (reach / 4)) ** 2))
    fade = torch.sigmoid((0.85 + torch.rand(n, 1, 1, 1, device=dev) * 0.1 - gy[None]) / 0.05)
    level = 0.35 + torch.rand(n, 1, 1, 1, device=dev) * 0.3
    arm = (soft * level + 0.25 * bone * soft) * fade
    drawn = torch.maximum(x, arm.clamp(0, 1))
    return torch.where(pick[:, None, None, None], drawn, x)


def collimation(x: torch.Tensor, y: torch.Tensor, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collimator bands (0-10 % per side, black or unexposed white): what they hide is not lung."""
    n, _, h, w = x.shape
    if not pick.any():
        return x, y
    dev = x.device
    gy, gx = _grid(h, w, dev)
    cut = torch.rand(n, 4, device=dev) * 0.10 * (torch.rand(n, 4, device=dev) < 0.6)
    band = (
        (gy < cut[:, 0, None, None])
        | (gy > 1 - cut[:, 1, None, None])
        | (gx < cut[:, 2, None, None])
        | (gx > 1 - cut[:, 3, None, None])
    ) & pick[:, None, None]
    fill = torch.where(
        torch.rand(n, 1, 1, 1, device=dev) < 0.5, 0.0, 0.75 + 0.2 * torch.rand(n, 1, 1, 1, device=dev)
    )
    return torch.where(band[:, None], fill, x), torch.where(band, torch.zeros_like(y), y)


def real_world(x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each artefact on its own random share of the batch; ``y`` (lung labels) follows collimation."""
    n, dev = x.shape[0], x.device
    x = arms(x, _chosen(n, P_ARMS, dev))
    x = lines(x, _chosen(n, P_LINES, dev))
    x = text(x, _chosen(n, P_TEXT, dev))
    if y is not None:
        x, y = collimation(x, y, _chosen(n, P_COLLIMATION, dev))
    x = blur(x, _chosen(n, P_BLUR, dev))
    return x.clamp(0, 1), y

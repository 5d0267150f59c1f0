"""Training-time augmentation: exposure/contrast jitter, small affine warps, and the segmentation
members' joint image-and-label transform (with the side-swapping mirror, children's proportions and
the real-world artefacts of ``artefacts``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrmesh.ml.artefacts import real_world


def augment(images: torch.Tensor) -> torch.Tensor:
    """Exposure and contrast jitter: the sites already vary geometry; keep labels exact."""
    n, dev = images.shape[0], images.device
    gain = 1.0 + 0.12 * (torch.rand(n, 1, 1, 1, device=dev) - 0.5)
    gamma = torch.exp(0.2 * (torch.rand(n, 1, 1, 1, device=dev) - 0.5))
    return (images.clamp(0, 1) ** gamma * gain).clamp(0, 1)


def _affine(
    n: int, dev: torch.device, degrees: float, scale: tuple[float, float], shift: float, aspect: float = 0.0
) -> torch.Tensor:
    """Random affine ``theta`` per image for ``affine_grid``: rotation, zoom (>1 = in) and shift.

    ``aspect`` stretches width against height by up to that share either way: a child's chest is
    wider for its height than an adult's, and the synthetic patients are adults.
    """
    ang = (torch.rand(n, device=dev) - 0.5) * math.radians(degrees)
    zoom = scale[0] + torch.rand(n, device=dev) * (scale[1] - scale[0])
    stretch = 1.0 + (torch.rand(n, device=dev) - 0.5) * 2 * aspect
    move = (torch.rand(n, 2, device=dev) - 0.5) * shift
    zx, zy = zoom * stretch, zoom / stretch
    cos, sin = torch.cos(ang), torch.sin(ang)
    rows = [
        torch.stack([cos / zx, -sin / zy, move[:, 0]], 1),
        torch.stack([sin / zx, cos / zy, move[:, 1]], 1),
    ]
    return torch.stack(rows, 1)


def _resample(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp(images: torch.Tensor) -> torch.Tensor:
    """Small random affine (scale, rotation, shift) for label-free training (the embedder).

    Positioning varies between acquisitions; without this the embedder memorises where each
    training image sits in the frame instead of what its lungs look like.
    """
    return _resample(images, _affine(images.shape[0], images.device, 10, (0.92, 1.08), 0.1))


_SWAP_SIDES = torch.tensor([0, 2, 1])  # background, right, left -> background, left, right


def augment_seg(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint geometric and stronger exposure jitter for the segmentation members.

    Synthetic films show the whole torso on black; real ones are often collimated tighter (the
    body fills the frame) and washed out (lifted blacks). Labels move with the image (nearest
    neighbour); a third of the batch stays unwarped so the synthetic geometry is kept.

    Half the films are mirrored with the labels re-assigned by position: in a film displayed in
    standard orientation the patient's right lung is the one on the image's left, whatever its
    texture or the heart's shadow. Members trained without this learnt side from such cues, which
    did not carry over to real film (the real test radiograph came out with swapped sides, a coin
    toss from one training run to the next). With it and the coordinate channel the members get
    (``nets.Segmenter``), position is the one cue that holds; on the real radiograph it lowered the
    wrong-side share for four members of five (docs/models.md).

    Then what real films carry and synthetic ones lack (``artefacts.real_world``: arms, leads and
    tubes, burned-in text, collimation, blur) and a child's proportions (width against height).
    """
    n, dev = images.shape[0], images.device
    theta = _affine(n, dev, 12, (0.95, 1.35), 0.12, aspect=0.15)
    keep = torch.rand(n, device=dev) < 1 / 3
    theta[keep] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=dev)
    x = _resample(augment(images), theta)
    y = _resample(labels[:, None].float(), theta, mode="nearest")[:, 0].long()
    mirror = torch.rand(n, device=dev) < 0.5
    x[mirror] = x[mirror].flip(-1)
    y[mirror] = _SWAP_SIDES.to(dev)[y[mirror].flip(-1)]
    lift = torch.rand(n, 1, 1, 1, device=dev) * 0.4 * (torch.rand(n, 1, 1, 1, device=dev) < 0.5)
    gamma = torch.exp(0.8 * (torch.rand(n, 1, 1, 1, device=dev) - 0.5))
    x = (lift + (1 - lift) * x.clamp(0, 1) ** gamma).clamp(0, 1)
    x, y = real_world(x, y)
    noise = torch.randn_like(x) * 0.03 * torch.rand(n, 1, 1, 1, device=dev)
    return (x + noise).clamp(0, 1), y

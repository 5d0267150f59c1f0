"""The four networks (PyTorch). Imported only by training and export; services use ONNX/Triton.

Every image network takes ``image`` = display values in [0, 1] at MODEL_INPUT^2 (see ``spec``) and
normalises inside the graph. The embedder and the landmark detector work internally at half that
resolution (``WORK``): on CPUs that is the difference between minutes and hours, and landmarks and
opacities are large structures. The segmentation members work at the full MODEL_INPUT
(``SEG_WORK``): at half resolution the lung boundary is blurred by one output pixel in every member
alike, which caps every member near the same Dice and leaves the ensemble nothing to average out.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cxrmesh.contracts.preprocessing import INPUT_MEAN, INPUT_STD
from cxrmesh.contracts.tensors import (
    ATTENTION_SIZE,
    CLINICAL_FEATURES,
    EMBED_DIM,
    LANDMARKS,
    MODEL_INPUT,
    REGION_FEATURES,
    SEG_CLASSES,
    SEG_MEMBERS,
)

WORK = MODEL_INPUT // 2
SEG_WORK = MODEL_INPUT
SEG_ENCODER = "tu-mobilenetv3_small_100"
LANDMARK_ENCODER = "tu-mobilenetv3_small_100"
EMBED_BACKBONE = "resnet10t"


def _prepare(image: torch.Tensor, work: int = WORK) -> torch.Tensor:
    """[0, 1] display values at MODEL_INPUT -> standardised values at ``work`` pixels per side."""
    x = (image - INPUT_MEAN) / INPUT_STD
    return x if work == MODEL_INPUT else F.avg_pool2d(x, kernel_size=MODEL_INPUT // work)


class Embedder(nn.Module):
    """CNN + spatial attention pooling + projection head -> L2-normalised embedding.

    The attention map weights where features are pooled from (the retrieval paper's attention
    mechanism); it is returned so the services can show which lung regions drove a match.
    """

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.backbone = timm.create_model(
            EMBED_BACKBONE, features_only=True, out_indices=(2,), in_chans=1, pretrained=False
        )
        ch = self.backbone.feature_info.channels()[-1]
        self.refine = nn.Sequential(
            nn.Conv2d(ch, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(inplace=True)
        )
        self.attend = nn.Sequential(nn.Conv2d(192, 64, 1), nn.ReLU(inplace=True), nn.Conv2d(64, 1, 1))
        # no bias on the last layer: a shared offset pulls every embedding towards one direction
        self.head = nn.Sequential(nn.Linear(192, 256), nn.ReLU(inplace=True), nn.Linear(256, dim, bias=False))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.refine(self.backbone(_prepare(image))[-1])
        feats = F.adaptive_avg_pool2d(feats, ATTENTION_SIZE)
        attention = torch.sigmoid(self.attend(feats))
        pooled = (feats * attention).sum(dim=(2, 3)) / (attention.sum(dim=(2, 3)) + 1e-6)
        return F.normalize(self.head(pooled), dim=1), attention


def _seg_arch(name: str) -> nn.Module:
    """The five members, each ~1.1-1.4 M parameters on the same light encoder.

    Chosen by a side-by-side run of eight candidates (docs/models.md): MA-Net (multi-scale
    attention, encoder depth 4 so its attention blocks stay small) replaced LinkNet, the weakest;
    FPN trains without decoder dropout and DeepLabV3+ with an output stride of 8, both a little
    better on validation than smp's defaults.
    """
    kw = {"encoder_name": SEG_ENCODER, "encoder_weights": None, "in_channels": 2, "classes": len(SEG_CLASSES)}
    small = (64, 32, 24, 16, 8)
    return {
        "lung_seg_unet": lambda: smp.Unet(decoder_channels=small, **kw),
        "lung_seg_unetplusplus": lambda: smp.UnetPlusPlus(decoder_channels=(48, 32, 24, 16, 8), **kw),
        "lung_seg_fpn": lambda: smp.FPN(
            decoder_pyramid_channels=64, decoder_segmentation_channels=32, decoder_dropout=0.0, **kw
        ),
        "lung_seg_manet": lambda: smp.MAnet(
            encoder_depth=4, decoder_channels=small[:4], decoder_pab_channels=32, **kw
        ),
        "lung_seg_deeplabv3plus": lambda: smp.DeepLabV3Plus(
            decoder_channels=64, encoder_output_stride=8, **kw
        ),
    }[name]()


class Segmenter(nn.Module):
    """One ensemble member: image -> per-pixel class probabilities (background, right, left lung).

    The network sees a second input channel, the horizontal image coordinate (-1 left .. 1 right),
    made inside the graph (CoordConv, Liu et al. 2018). Which lung is which is a matter of position
    in a radiograph displayed in standard orientation; without the coordinate a network has to
    infer it from texture and padding, and members trained on synthetic films labelled the lungs
    of the real test radiograph on the wrong sides, differently from one training run to the next.
    Training mirrors films with labels re-assigned by position (``augment.augment_seg``) so the
    coordinate is the cue that holds.
    """

    def __init__(self, name: str):
        super().__init__()
        if name not in SEG_MEMBERS:
            raise ValueError(f"unknown segmentation member {name!r}; expected one of {SEG_MEMBERS}")
        self.name = name
        self.net = _seg_arch(name)
        ramp = torch.linspace(-1.0, 1.0, SEG_WORK).reshape(1, 1, 1, SEG_WORK).expand(1, 1, SEG_WORK, SEG_WORK)
        self.register_buffer("xcoord", ramp.contiguous(), persistent=False)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits at SEG_WORK resolution (what training optimises)."""
        x = _prepare(image, SEG_WORK)
        return self.net(torch.cat([x, self.xcoord.expand(x.shape[0], -1, -1, -1).to(x.dtype)], dim=1))

    def load_earlier_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights of a member trained without the coordinate channel (to fine-tune them).

        The first convolution gets a zero kernel for the new channel, so the loaded member computes
        exactly what it did before and learns to use the coordinate from there. Current weights
        load unchanged.
        """
        own = self.state_dict()
        state = dict(state)
        for key, value in state.items():
            if key in own and value.ndim == 4 and value.shape[1] == 1 and own[key].shape[1] == 2:
                state[key] = torch.cat([value, torch.zeros_like(value)], dim=1)
        self.load_state_dict(state)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.logits(image)
        if SEG_WORK != MODEL_INPUT:
            logits = F.interpolate(logits, size=MODEL_INPUT, mode="bilinear", align_corners=False)
        return torch.softmax(logits, dim=1)


def soft_argmax(heatmaps: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel (x, y) of each heatmap channel by a spatial softmax, plus its peak probability.

    Coordinates are in pixels of the heatmap with pixel centres at integers. The expectation is
    taken relative to the arg-max pixel (mathematically the same as the plain soft-argmax): offsets
    near the peak are small, so float32 rounding stays ~1e-6 px and ONNX matches PyTorch.
    """
    n, c, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, c, h * w)
    prob = torch.softmax(flat * beta, dim=-1).reshape(n, c, h, w)
    peak = flat.argmax(dim=-1)
    py = torch.div(peak, w, rounding_mode="floor").to(heatmaps.dtype)
    px = (peak - torch.div(peak, w, rounding_mode="floor") * w).to(heatmaps.dtype)
    xs = torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device)
    ys = torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device)
    x = px + (prob.sum(dim=2) * (xs[None, None, :] - px[..., None])).sum(dim=-1)
    y = py + (prob.sum(dim=3) * (ys[None, None, :] - py[..., None])).sum(dim=-1)
    return torch.stack([x, y], dim=-1), prob.reshape(n, c, h * w).amax(dim=-1)


class Landmarker(nn.Module):
    """Heatmap regression for carina and left hilum with soft-argmax decoding inside the graph."""

    beta = 8.0

    def __init__(self):
        super().__init__()
        self.net = smp.Unet(
            encoder_name=LANDMARK_ENCODER,
            encoder_weights=None,
            in_channels=1,
            classes=len(LANDMARKS),
            decoder_channels=(64, 32, 24, 16, 8),
        )

    def heatmaps(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(_prepare(image))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xy, conf = soft_argmax(self.heatmaps(image), self.beta)
        scale = MODEL_INPUT / WORK
        return (xy + 0.5) * scale - 0.5, conf


class PrognosisHead(nn.Module):
    """Logistic model over the frozen embedding, four-region features and clinical variables.

    Feature standardisation is part of the module (buffers), so the served model takes raw values.
    """

    def __init__(self):
        super().__init__()
        n = EMBED_DIM + len(REGION_FEATURES) + len(CLINICAL_FEATURES)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.linear = nn.Linear(n, 1)

    def features(
        self, embedding: torch.Tensor, regions: torch.Tensor, clinical: torch.Tensor
    ) -> torch.Tensor:
        return (torch.cat([embedding, regions, clinical], dim=1) - self.mean) / self.std

    def forward(self, embedding: torch.Tensor, regions: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(self.features(embedding, regions, clinical)))

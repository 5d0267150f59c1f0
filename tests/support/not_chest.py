"""Images that are not a frontal chest radiograph, for the quality gate's tests and benchmark.

Each builder returns a letterboxed MODEL_SIZE x MODEL_SIZE float32 display image in [0, 1]
(1 = white, as ``cxrmesh.analysis.pixels.letterbox`` gives), built with numpy and PIL only and
deterministic (fixed seeds). Shapes are drawn as 8-bit masks, softened with a Gaussian blur and
mixed as X-ray densities: dark air, grey soft tissue, bright bone. The rotations take a real
frontal chest so the only thing wrong with them is the orientation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cxrmesh.contracts.preprocessing import MODEL_SIZE

S = MODEL_SIZE


def _mask(draw: Callable[[ImageDraw.ImageDraw], None], blur: float = 2.0) -> np.ndarray:
    """A soft [0, 1] mask from PIL drawing calls on a blank S x S canvas."""
    img = Image.new("L", (S, S), 0)
    draw(ImageDraw.Draw(img))
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, dtype=np.float32) / 255.0


def _finish(img: np.ndarray, seed: int, noise: float = 0.015) -> np.ndarray:
    """Add a little quantum-like noise and clip to display values."""
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0.0, noise, img.shape), 0.0, 1.0).astype(np.float32)


def _bone(d: ImageDraw.ImageDraw, box: tuple[float, float, float, float], radius: float) -> None:
    d.rounded_rectangle(box, radius=radius, fill=255)


# ----------------------------------------------------------------------------- trivial


def blank_grey(level: float = 0.5) -> np.ndarray:
    """A flat grey frame (an empty exposure, a failed read-out)."""
    return np.full((S, S), level, dtype=np.float32)


def uniform_noise(seed: int = 0) -> np.ndarray:
    """Uniform white noise over the whole range (a corrupt pixel buffer)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (S, S)).astype(np.float32)


# ----------------------------------------------------------------------------- orientation


def rotated_quarter(chest: np.ndarray) -> np.ndarray:
    """A frontal chest turned 90 degrees counter-clockwise (a cassette read in the wrong way)."""
    return np.ascontiguousarray(np.rot90(chest, 1)).astype(np.float32)


def upside_down(chest: np.ndarray) -> np.ndarray:
    """A frontal chest turned 180 degrees (hung upside down)."""
    return np.ascontiguousarray(np.rot90(chest, 2)).astype(np.float32)


# ----------------------------------------------------------------------------- other pictures


SCREEN_BOX = (86, 104, 434, 384)  # (left, top, right, bottom) of the lit screen in the photo


def screen_photo(seed: int = 1, shown: np.ndarray | None = None) -> np.ndarray:
    """A phone photo of a monitor: a room gradient, a dark bezel, a bright screen with moire.

    ``shown`` (display values) is what the monitor shows, stretched over the screen; None is a
    blank bright screen.
    """
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) / S
    room = 0.25 + 0.35 * y + 0.1 * np.sin(3.0 * x)  # wall lit from below, one soft fold
    bezel = _mask(lambda d: d.rectangle((70, 90, 450, 400), fill=255), blur=1.5)
    screen = _mask(lambda d: d.rectangle(SCREEN_BOX, fill=255), blur=1.0)
    # moire: the camera's pixel grid beating against the monitor's, two near-parallel gratings
    a, b = 2 * np.pi * 61.0, 2 * np.pi * 64.0
    moire = 0.5 + 0.25 * np.cos(a * (x + 0.05 * y)) * np.cos(b * (x * 0.98 + 0.08 * y))
    glow = 0.85 - 0.15 * ((x - 0.5) ** 2 + (y - 0.48) ** 2) * 4
    if shown is not None:
        left, top, right, bottom = SCREEN_BOX
        picture = Image.fromarray(np.asarray(shown, dtype=np.float32)).resize((right - left, bottom - top))
        glow = glow.copy()
        glow[top:bottom, left:right] = 0.1 + 0.8 * np.asarray(picture, dtype=np.float32)
    img = room * (1 - bezel) + 0.08 * bezel * (1 - screen) + screen * (glow * 0.75 + 0.25 * moire)
    return _finish(img, seed, noise=0.02)


def screen_photo_of(chest: np.ndarray) -> np.ndarray:
    """A phone photo of a monitor showing a frontal chest: lungs, but small, in a frame, with moire."""
    return screen_photo(seed=5, shown=chest)


def hand(seed: int = 2) -> np.ndarray:
    """A PA hand: soft-tissue silhouette, bright metacarpals, phalanges, carpals and forearm bones."""

    def tissue(d: ImageDraw.ImageDraw) -> None:
        d.rounded_rectangle((150, 250, 360, 512), radius=60, fill=255)  # palm and wrist
        for cx, top in ((175, 70), (225, 40), (275, 50), (325, 90)):
            d.rounded_rectangle((cx - 24, top, cx + 24, 300), radius=22, fill=255)
        d.polygon([(150, 330), (70, 220), (95, 200), (185, 300)], fill=255)  # thumb

    def bones(d: ImageDraw.ImageDraw) -> None:
        for cx, top in ((175, 80), (225, 50), (275, 60), (325, 100)):
            span = (300 - top) / 3
            for k in range(3):  # three phalanges per finger, joint gaps between them
                _bone(
                    d, (cx - 11 + k * 1.5, top + k * span + 4, cx + 11 - k * 1.5, top + (k + 1) * span - 4), 7
                )
            _bone(d, (cx - 12, 305, cx + 12, 390), 8)  # metacarpal
        for cx, cy in ((190, 410), (230, 405), (270, 408), (310, 414), (210, 440), (255, 440), (295, 442)):
            d.ellipse((cx - 17, cy - 14, cx + 17, cy + 14), fill=255)  # carpals
        _bone(d, (175, 465, 235, 512), 10)  # radius
        _bone(d, (265, 468, 310, 512), 10)  # ulna
        d.polygon([(160, 380), (90, 235), (105, 225), (180, 365)], fill=255)  # thumb rays

    img = 0.05 + 0.3 * _mask(tissue, 4.0) + 0.5 * _mask(bones, 1.5)
    return _finish(img, seed)


def knee(seed: int = 3) -> np.ndarray:
    """An AP knee: femur above, tibia and fibula below, patella over the joint, soft tissue around."""

    def tissue(d: ImageDraw.ImageDraw) -> None:
        d.polygon([(120, 0), (392, 0), (410, 250), (370, 512), (150, 512), (105, 250)], fill=255)

    def cortex(d: ImageDraw.ImageDraw) -> None:
        d.polygon(
            [(210, 0), (300, 0), (310, 170), (355, 225), (340, 250), (170, 250), (160, 225), (200, 170)],
            fill=255,
        )
        d.polygon(
            [(165, 272), (350, 272), (335, 305), (300, 330), (295, 512), (220, 512), (215, 330), (180, 305)],
            fill=255,
        )
        d.polygon([(338, 300), (362, 300), (352, 512), (334, 512)], fill=255)  # fibula

    def medulla(d: ImageDraw.ImageDraw) -> None:
        d.rectangle((228, 0, 282, 160), fill=255)
        d.rectangle((236, 340, 278, 512), fill=255)

    patella = _mask(lambda d: d.ellipse((215, 175, 300, 260), fill=255), 3.0)
    img = (
        0.04
        + 0.32 * _mask(tissue, 5.0)
        + 0.5 * _mask(cortex, 1.5)
        - 0.15 * _mask(medulla, 4.0)
        + 0.1 * patella
    )
    return _finish(img, seed)


def lateral_chest(seed: int = 4) -> np.ndarray:
    """A lateral chest: one large lung field, spine at the back, heart in front, arms raised.

    The patient faces image left: sternum on the left edge of the lung field, vertebral bodies
    stacked along the right, the heart's shadow in the front-lower field and the diaphragm dome
    below with the bright abdomen under it.
    """

    def body(d: ImageDraw.ImageDraw) -> None:
        d.polygon([(95, 40), (410, 30), (455, 250), (450, 512), (75, 512), (60, 250)], fill=255)

    field = [(150, 85), (250, 55), (345, 80), (395, 200), (405, 380), (330, 360), (210, 395), (120, 410)]

    def lung(d: ImageDraw.ImageDraw) -> None:
        d.polygon([*field, (105, 250)], fill=255)

    def spine(d: ImageDraw.ImageDraw) -> None:
        for k in range(12):
            top = 40 + 38 * k
            x0 = 385 + 0.08 * top
            _bone(d, (x0, top, x0 + 48, top + 30), 5)  # vertebral bodies with disc gaps

    heart = _mask(lambda d: d.ellipse((110, 210, 300, 410), fill=255), 8.0)
    arms = _mask(lambda d: (_bone(d, (170, 0, 215, 150), 18), _bone(d, (240, 0, 280, 140), 16)), 2.0)
    sternum = _mask(lambda d: d.line([(118, 110), (112, 330)], fill=255, width=10), 2.0)
    img = 0.02 + 0.5 * _mask(body, 6.0) - 0.3 * _mask(lung, 8.0) + 0.22 * heart * _mask(lung, 8.0)
    img = img + 0.3 * _mask(spine, 1.5) + 0.2 * arms + 0.15 * sternum
    return _finish(img, seed)


BUILDERS_WITHOUT_CHEST: dict[str, Callable[[], np.ndarray]] = {
    "blank_grey": blank_grey,
    "uniform_noise": uniform_noise,
    "screen_photo": screen_photo,
    "hand": hand,
    "knee": knee,
    "lateral_chest": lateral_chest,
}
BUILDERS_FROM_CHEST: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "rotated_90": rotated_quarter,
    "upside_down": upside_down,
    "screen_photo_of_chest": screen_photo_of,
}


def not_chest_images(chest: np.ndarray) -> dict[str, np.ndarray]:
    """Every negative by name; the rotations are made from ``chest`` (a frontal display image)."""
    out = {name: build() for name, build in BUILDERS_WITHOUT_CHEST.items()}
    out.update({name: build(chest) for name, build in BUILDERS_FROM_CHEST.items()})
    return out

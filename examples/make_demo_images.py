"""Write a small synthetic ImageFolder for the demo: DIR/<class>/*.png, seeded and deterministic.

These are drawings, not medical images: grey chest-like fields with or without bright upper-zone
blotches, and skin-coloured patches with a round, even mole or an irregular multi-coloured one.
They only give the demo something to run on when no real data set is passed with DATA=...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 96


def _chest(rng: np.random.Generator, diseased: bool) -> Image.Image:
    img = Image.new("L", (SIZE, SIZE), 20)
    draw = ImageDraw.Draw(img)
    for x0 in (14, 52):  # two dark lung fields inside a brighter chest wall
        draw.ellipse([x0, 12, x0 + 30, 84], fill=int(rng.integers(35, 60)))
    draw.rectangle([44, 10, 52, 86], fill=150)  # spine / mediastinum
    if diseased:
        for _ in range(int(rng.integers(3, 7))):
            x, y = int(rng.integers(16, 78)), int(rng.integers(14, 40))
            r = int(rng.integers(3, 8))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(130, 200)))
    return img.filter(ImageFilter.GaussianBlur(1.5)).convert("RGB")


def _skin(rng: np.random.Generator, malignant: bool) -> Image.Image:
    skin = tuple(int(c) for c in rng.integers([190, 140, 120], [230, 180, 160]))
    img = Image.new("RGB", (SIZE, SIZE), skin)
    draw = ImageDraw.Draw(img)
    if malignant:
        for _ in range(5):
            x, y = rng.integers(25, 70, size=2)
            r = int(rng.integers(8, 20))
            colour = tuple(int(c) for c in rng.choice([[40, 20, 10], [90, 50, 30], [60, 60, 110], [150, 60, 60]]))
            draw.ellipse([x - r, y - int(r * rng.uniform(0.5, 1.2)), x + r, y + r], fill=colour)
    else:
        r = int(rng.integers(12, 20))
        colour = tuple(int(c) for c in rng.integers([100, 60, 30], [140, 90, 60]))
        draw.ellipse([48 - r, 48 - r, 48 + r, 48 + r], fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1.0))


DRAWERS = {
    "tuberculosis": lambda rng: _chest(rng, True),
    "normal chest": lambda rng: _chest(rng, False),
    "melanoma": lambda rng: _skin(rng, True),
    "nevus": lambda rng: _skin(rng, False),
}


def write_images(out: Path, per_class: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, draw in DRAWERS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(rng).save(folder / f"{name.replace(' ', '_')}_{i:03d}.png")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=12)
    args = parser.parse_args()
    print(write_images(args.out, args.per_class))

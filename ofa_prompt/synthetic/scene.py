"""Scenes of coloured shapes: sampling and drawing.

A 64x64 canvas is split into a 2x2 grid; each shape sits inside its own cell, so shapes never overlap
and every shape has a position word ("top left", ...). Boxes are exact pixel bounding boxes.
"""
import base64
import io
import random
from dataclasses import dataclass
from typing import List, Tuple

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # reading order
BACKGROUND = (245, 245, 245)
IMAGE_SIZE = 64
MIN_SIDE, MAX_SIDE = 16, 26  # shape sizes in pixels, inside a 32-pixel cell


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    cell: int  # index into CELLS
    box: Tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels: the drawn area spans x1 <= x < x2, y1 <= y < y2

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def position(self) -> str:
        return CELLS[self.cell]


def all_combos() -> List[Tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES]


def sample_scene(rng: random.Random, combos, max_shapes: int = 3) -> List[Shape]:
    """1..max_shapes shapes with distinct (colour, shape) pairs from `combos`, in reading order."""
    n = rng.randint(1, max_shapes)
    cells = sorted(rng.sample(range(len(CELLS)), n))
    picked = rng.sample(sorted(combos), n)
    half = IMAGE_SIZE // 2
    scene = []
    for cell, (color, shape) in zip(cells, picked):
        side = rng.randint(MIN_SIDE, MAX_SIDE)
        x0 = (cell % 2) * half + rng.randint(1, half - side - 1)
        y0 = (cell // 2) * half + rng.randint(1, half - side - 1)
        scene.append(Shape(color, shape, cell, (x0, y0, x0 + side, y0 + side)))
    return scene


def render(scene: List[Shape]) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene:
        x1, y1 = s.box[:2]
        x2, y2 = s.box[2] - 1, s.box[3] - 1  # Pillow's corners are inclusive
        fill = COLORS[s.color]
        if s.shape == "circle":
            draw.ellipse((x1, y1, x2, y2), fill=fill)
        elif s.shape == "square":
            draw.rectangle((x1, y1, x2, y2), fill=fill)
        else:  # apex up: the box centre is inside the triangle
            draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    return image


def to_base64(image: Image.Image) -> str:
    # PNG without metadata is byte-identical for identical pixels, which keeps the data deterministic.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")

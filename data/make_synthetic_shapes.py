"""SYNTHETIC multi-class segmentation data in the SegFolder layout: coloured shapes on a noisy background.

    python -m data.make_synthetic_shapes --out Dataset/Shapes --images 60 --classes 3

writes::


    OUT/images/<nnnn>.png    RGB, width x height: a noisy grey background and one shape of each class
    OUT/masks/<nnnn>.png     8-bit label maps: 0 background, c = a shape of class c (1..classes-1),
                             255 (the default --ignore_index) on each shape's one-pixel outline

Class ``c`` has its own colour (plus noise) and its own shape kind (ellipse, rectangle or triangle in
turn), so a small model can tell the classes apart. The outline is "ignore", as PASCAL VOC marks its
object borders. The same seed gives byte-identical files.
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

#: Mean RGB colour of class c (1..); background pixels are grey.
COLOURS = [(220, 40, 40), (40, 90, 230), (40, 200, 60), (230, 200, 30), (200, 60, 220), (40, 210, 210)]
IGNORE = 255


def _shape(draw, kind, box, fill, outline):
    x0, y0, x1, y1 = box
    if kind == 0:
        draw.ellipse(box, fill=fill, outline=outline)
    elif kind == 1:
        draw.rectangle(box, fill=fill, outline=outline)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)


def generate(out, images=24, width=48, height=32, classes=3, seed=0):
    """Write ``images`` image/label-map pairs into ``out``; returns the list of ``(image, mask)`` paths.

    Args:
        out: folder to create (``images/`` and ``masks/`` inside).
        images: number of pairs. width, height: their size in pixels (>= 16).
        classes: ``K`` including the background, 2..7.
        seed: NumPy seed of everything drawn.

    Raises:
        ValueError: a size below 16 or ``classes`` outside 2..7.
    """
    if min(width, height) < 16 or not 2 <= classes <= len(COLOURS) + 1:
        raise ValueError(f"width/height must be >= 16 and classes 2..{len(COLOURS) + 1}")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    pairs = []
    for n in range(images):
        labels = Image.new("L", (width, height), 0)
        colour = Image.new("L", (width, height), 0)  # which class colour each pixel takes (0: background)
        draw_labels, draw_colour = ImageDraw.Draw(labels), ImageDraw.Draw(colour)
        for c in rng.permutation(np.arange(1, classes)).tolist():  # one shape of each class, in random order
            w, h = int(rng.integers(width // 4, width // 2 + 1)), int(rng.integers(height // 4, height // 2 + 1))
            x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            box = (x0, y0, x0 + w, y0 + h)
            _shape(draw_labels, (c - 1) % 3, box, c, IGNORE)
            _shape(draw_colour, (c - 1) % 3, box, c, c)
        noise = rng.normal(0, 18, (height, width, 3))
        pixels = np.full((height, width, 3), 128.0) + rng.uniform(-30, 30) + noise
        which = np.asarray(colour)
        for c in range(1, classes):
            pixels[which == c] = np.asarray(COLOURS[c - 1], np.float64) + noise[which == c]
        stem = f"{n:04d}"
        image_path = os.path.join(out, "images", stem + ".png")
        mask_path = os.path.join(out, "masks", stem + ".png")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image_path)
        labels.save(mask_path)
        pairs.append((image_path, mask_path))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.make_synthetic_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write images/ and masks/ into")
    parser.add_argument("--images", type=int, default=60, help="number of image/mask pairs")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--classes", type=int, default=3, help="K including the background (2..7)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        pairs = generate(args.out, args.images, args.width, args.height, args.classes, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {len(pairs)} SYNTHETIC image/label-map pairs ({args.classes} classes) to {args.out}")


if __name__ == "__main__":
    main()

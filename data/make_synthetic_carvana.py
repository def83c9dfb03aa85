"""SYNTHETIC stand-in for the Kaggle Carvana Image Masking Challenge: no download, not Carvana data.

    python -m data.make_synthetic_carvana --out Dataset/SyntheticCarvana --cars 20 --views 6

writes the on-disk layout of the real ``train.zip`` / ``train_masks.zip``::

    OUT/train/<id>_<view>.jpg               RGB JPEG, width x height (real: 1918x1280)
    OUT/train_masks/<id>_<view>_mask.gif    palette GIF, indices 0 = background (black), 1 = car (white)

``<id>`` is 12 lowercase hex digits derived from the seed and car number, ``<view>`` is
``01`` .. ``--views`` (real: 16 views on a turntable). Each car is a smooth body with a
cabin and two dark wheels, seen turning from view to view, over cluttered backgrounds
whose shapes sometimes share the car's colour. The same seed gives byte-identical files.
"""

import argparse
import hashlib
import math
import os

import numpy as np
from PIL import Image, ImageDraw

LIMITS = {"cars": (1, None), "views": (1, 16), "width": (16, None), "height": (16, None)}


def _problem(name, value):
    """Why ``value`` is not allowed for ``name`` (a key of ``LIMITS``), or None."""
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return f"{name} must be an integer, got {value!r}"
    if value < low or (high is not None and value > high):
        return f"{name} must be " + (f"{low}..{high}" if high else f">= {low}") + f", got {value}"
    return None


def _power(u, n):
    """``|u| ** n`` for float32 ``u``: exp/log is several times faster than a float ``**``."""
    return np.exp(n * np.log(np.abs(u) + 1e-12))


def car_id(seed, car):
    """12 lowercase hex digits naming car ``car`` of ``seed`` (like Carvana's ``00087a6bd4dc``)."""
    return hashlib.blake2b(f"{seed}:{car}".encode(), digest_size=6).hexdigest()


def _blobs(rng, width, height, cells=6):
    """float32 (height, width) smooth noise in [0, 1]: a coarse random grid, bilinearly upsampled."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((width, height), Image.Resampling.BILINEAR))


def _background(rng, width, height, car_rgb):
    """float32 (height, width, 3), 0..255: wall/floor gradients, clutter (some in ``car_rgb``), blotchy light."""
    horizon = int(height * rng.uniform(0.35, 0.6))
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    wall, floor = rng.uniform(40, 220, (2, 2, 3)).astype(np.float32)
    bg = np.where(
        np.arange(height)[:, None, None] < horizon,
        wall[0] + t * (wall[1] - wall[0]),
        floor[0] + t * (floor[1] - floor[0]),
    )
    image = Image.fromarray(np.broadcast_to(bg, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(8, 20)):
        # a quarter of the clutter borrows the car's colour, so colour alone cannot segment
        rgb = car_rgb + rng.normal(0, 12, 3) if rng.random() < 0.25 else rng.uniform(0, 255, 3)
        fill = tuple(int(c) for c in np.clip(rgb, 0, 255))
        x0, x1 = sorted(rng.uniform(-0.1, 1.1, 2) * width)
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, 2) * height)
        kind = rng.integers(3)
        if kind < 2:
            (draw.rectangle, draw.ellipse)[kind]((x0, y0, x1, y1), fill=fill)
        else:
            draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, max(2, width // 48))))
    return np.asarray(image, dtype=np.float32) * (0.75 + 0.4 * _blobs(rng, width, height))[..., None]


def _car(rng, shape, width, height, view, views):
    """(mask bool (H, W), colour float32 (H, W, 3), shadow float32 (H, W) in [0, 1]) for one view."""
    theta = 2 * math.pi * (view - 1) / views + shape["phase"]
    a, b = shape["a"] * (0.55 + 0.45 * abs(math.sin(theta))), shape["b"]  # end-on, the car looks short
    cx, cy = width * (0.5 + rng.uniform(-0.06, 0.06)), height * (0.55 + rng.uniform(-0.05, 0.05))
    tilt = math.radians(rng.uniform(-6, 6))
    dx = np.arange(width, dtype=np.float32)[None, :] - cx
    dy = np.arange(height, dtype=np.float32)[:, None] - cy
    xl = dx * math.cos(tilt) + dy * math.sin(tilt)  # car-local coordinates, y down
    yl = dy * math.cos(tilt) - dx * math.sin(tilt)
    body = _power(xl / a, shape["n"]) + _power(yl / b, shape["n"]) <= 1
    cab_x = shape["cabin_shift"] * a * math.sin(theta)  # the cabin sits off-centre along the car
    cab = _power((xl - cab_x) / (shape["cabin_a"] * a), 2.5) + _power((yl + 0.65 * b) / (shape["cabin_b"] * b), 2.5)
    radius = shape["wheel"] * b
    wheels, hubs = np.zeros_like(body), np.zeros_like(body)
    for sign in (-1, 1):
        d2 = (xl - sign * 0.62 * a) ** 2 + (yl - 0.75 * b) ** 2
        wheels |= d2 <= radius**2
        hubs |= d2 <= (0.45 * radius) ** 2
    mask = body | (cab <= 1) | wheels
    shade = np.clip(1.25 - 0.45 * (yl + 1.5 * b) / (2.8 * b), 0.5, 1.4)  # lit from above
    shade = shade + 0.3 * np.exp(-(((yl + 0.2 * b) / (0.12 * b)) ** 2))  # specular stripe
    colour = (shade * (0.85 + 0.3 * _blobs(rng, width, height)))[..., None] * shape["rgb"]  # reflections
    window = (cab <= 0.6) & (yl < -0.95 * b)
    colour[window] = 0.3 * shape["rgb"] + np.float32([30, 40, 55])  # tinted glass
    colour[wheels] = 25
    colour[hubs] = 110
    shadow = np.exp(-((xl / (1.1 * a)) ** 2 + ((yl - 0.75 * b - radius) / (0.35 * b)) ** 2) * 2)
    return mask, colour, shadow


def generate(out_dir, cars=20, views=6, width=384, height=256, seed=0):
    """Write ``cars * views`` synthetic image/mask pairs under ``out_dir`` (Carvana layout).

    Images are RGB JPEGs of ``width x height`` pixels; masks are palette GIFs of the same
    size with indices 0 (background) and 1 (car, wheels included).

    Returns:
        sorted list of ``(image_path, mask_path)`` strings.

    Raises:
        ValueError: ``cars < 1``, ``views`` outside 1..16, ``width`` or ``height`` < 16;
            the message names the argument.
    """
    problems = [p for p in map(_problem, LIMITS, (cars, views, width, height)) if p]
    if problems:
        raise ValueError("; ".join(problems))
    image_dir, mask_dir = os.path.join(out_dir, "train"), os.path.join(out_dir, "train_masks")
    for folder in (image_dir, mask_dir):
        os.makedirs(folder, exist_ok=True)
    unit = min(width, 1.5 * height) / 2
    written = []
    for car in range(cars):
        rng = np.random.default_rng([seed, car])
        major = rng.uniform(0.62, 0.78) * unit
        shape = {
            "a": major,
            "b": major * rng.uniform(0.3, 0.38),
            "n": rng.uniform(2.5, 4.0),
            "phase": rng.uniform(-0.3, 0.3),
            "cabin_shift": rng.uniform(-0.25, 0.25),
            "cabin_a": rng.uniform(0.45, 0.65),
            "cabin_b": rng.uniform(0.7, 0.95),
            "wheel": rng.uniform(0.45, 0.6),
            "rgb": rng.uniform(20, 200, 3).astype(np.float32),
        }
        for view in range(1, views + 1):
            view_rng = np.random.default_rng([seed, car, view])
            mask, colour, shadow = _car(view_rng, shape, width, height, view, views)
            pixels = _background(view_rng, width, height, shape["rgb"]) * (1 - 0.6 * shadow[..., None])
            np.copyto(pixels, colour, where=mask[..., None])
            noise = np.frombuffer(view_rng.bytes(pixels.size), np.uint8).reshape(pixels.shape)
            pixels += 0.08 * (noise - np.float32(127.5))  # sensor-like noise, +-10; bytes() is the fastest draw
            stem = f"{car_id(seed, car)}_{view:02d}"
            image_path = os.path.join(image_dir, stem + ".jpg")
            mask_path = os.path.join(mask_dir, stem + "_mask.gif")
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image_path, quality=90)
            gif = Image.frombytes("P", (width, height), mask.astype(np.uint8).tobytes())
            gif.putpalette([0, 0, 0, 255, 255, 255])
            gif.save(mask_path)
            written.append((image_path, mask_path))
    return sorted(written)


def main(argv=None):
    """Parse flags, call :func:`generate`, print one line. A bad value exits 2 naming its flag."""
    parser = argparse.ArgumentParser(description="Write SYNTHETIC data in the Carvana layout.")
    parser.add_argument("--out", required=True, help="folder to write train/ and train_masks/ under")
    parser.add_argument("--cars", type=int, required=True, help="number of cars, >= 1")
    parser.add_argument("--views", type=int, default=6, help="views per car, 1..16 (real data: 16)")
    parser.add_argument("--width", type=int, default=384, help="pixels, >= 16 (real data: 1918)")
    parser.add_argument("--height", type=int, default=256, help="pixels, >= 16 (real data: 1280)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    problems = [p for p in map(_problem, LIMITS, (args.cars, args.views, args.width, args.height)) if p]
    if problems:
        parser.error("argument --" + problems[0])  # exits 2, like argparse's own errors
    pairs = generate(args.out, args.cars, args.views, args.width, args.height, args.seed)
    print(
        f"wrote {len(pairs)} SYNTHETIC image/mask pairs ({args.cars} cars x {args.views} views, "
        f"{args.width}x{args.height}) to {os.path.join(args.out, 'train')}{os.sep} and train_masks{os.sep}"
    )


if __name__ == "__main__":
    main()

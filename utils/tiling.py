"""Tiled (sliding-window) inference: a segmentation model applied window by window, the windows blended.

``tiled_predict(model, images, tile=(h, w), overlap=0.25, blend="gaussian")``
covers each image with windows of the tile's size, ``stride = round(tile * (1 -
overlap))`` (at least 1) apart, the last window of each row and column aligned
to the image's end so every pixel is covered without padding. An image smaller
than the tile (in either dimension) is padded with zeros (the mean colour, in
normalised units) at its bottom and right, then the output is cropped back.
Each window's logits are weighted by an importance map and the weighted sum is
divided by the sum of the weights at each pixel:

- ``gaussian``: ``exp(-d^2 / (2 sigma^2))`` per axis, ``sigma = tile / 8``, ``d`` the distance to the
  window's centre ``(n - 1) / 2``, 1 there (nnU-Net's ``compute_gaussian`` with ``sigma_scale=1/8``,
  Isensee et al. 2021, nnU-Net v2 ``inference/sliding_window_prediction.py``; MONAI's
  ``compute_importance_map(mode="gaussian", sigma_scale=0.125)``; both put the peak on pixel ``n // 2``,
  half a pixel off-centre for an even ``n``); at a window's edge ``exp(-8 ((n - 1) / n)^2) >= exp(-8)``
  per axis, so never 0;
- ``linear``: a ramp per axis, ``min(i + 1, n - i)`` over its maximum: 1 in the middle, ``1/ceil(n/2)``
  at the edges, never 0 (the tent or pyramid weighting of overlapping tiles).

The map is the product of the two axes' profiles. Where windows do not overlap
every weight divides by itself: blending changes nothing there.

Why our own code and not MONAI's ``monai.inferers.sliding_window_inference``,
which does the same (windows ``int(roi * (1 - overlap))`` apart, last one
aligned to the end, padding, a Gaussian map with sigma 1/8, any other map
through ``roi_weight_map``): MONAI 1.6.1 installs and imports beside torch 2.14,
but importing ``monai.inferers`` takes about 5 seconds of CPU at every start of
an evaluation or prediction, and the project would take on a large medical-imaging
package for these ~80 lines. Given :func:`blend_weights` as its ``roi_weight_map``,
MONAI's function returns the same numbers as :func:`tiled_predict` (checked on
37 x 53 and 64 x 48 images, 16 x 16 tiles, overlaps 0, 0.25 and 0.5, both blends)
wherever ``int`` and ``round`` of ``tile * (1 - overlap)`` agree; it pads an image
smaller than the tile on both sides, we at the end.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from base.config.checks import check

BLENDS = ("gaussian", "linear")


def window_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``tile`` (<= ``size``) ``stride`` apart, the last at ``size - tile``."""
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)  # aligned to the end: the last pixels are covered, no padding
    return starts


def blend_weights(tile: tuple[int, int], blend: str = "gaussian") -> torch.Tensor:
    """float32 ``(h, w)`` importance map of a window (module docstring), max 1, every value > 0.

    Raises:
        ValueError: an unknown ``blend``.
    """
    profiles = []
    for n in tile:
        i = torch.arange(n, dtype=torch.float64)
        if blend == "gaussian":
            sigma = n / 8
            p = torch.exp(-((i - (n - 1) / 2) ** 2) / (2 * sigma**2))
        elif blend == "linear":
            p = torch.minimum(i + 1, n - i)
        else:
            raise ValueError(f"--tile_blend {blend!r}: expected one of {', '.join(BLENDS)}")
        profiles.append(p / p.max())
    return (profiles[0][:, None] * profiles[1][None, :]).float()


@torch.no_grad()
def tiled_predict(
    model: nn.Module,
    images: torch.Tensor,
    tile: tuple[int, int],
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
) -> torch.Tensor:
    """Blended logits of ``model`` over sliding windows of ``images`` (module docstring).

    Args:
        model: maps float ``(B, C, h, w)`` windows to logits ``(B, K, h, w)`` (a tile-sized output).
        images: float ``(N, C, H, W)``, any ``H, W >= 1``.
        tile: ``(h, w)`` window size in pixels, each >= 1.
        overlap: fraction of a window shared with the next, ``0 <= overlap < 1``.
        blend: ``"gaussian"`` or ``"linear"`` (:func:`blend_weights`).
        batch_size: windows per forward pass (all images' windows are batched together).

    Returns:
        float32 ``(N, K, H, W)`` logits on ``images``' device: at each pixel the weighted mean of the
        logits of the windows covering it.

    Raises:
        ValueError: a bad ``tile``, ``overlap`` or ``blend``; a model output that is not ``(B, K, h, w)``.
    """
    h, w = tile
    if h < 1 or w < 1 or not 0 <= overlap < 1 or batch_size < 1:
        raise ValueError(f"tiled_predict: tile {tile}, overlap {overlap}, batch_size {batch_size} out of range")
    n, _, height, width = images.shape
    pad_h, pad_w = max(h - height, 0), max(w - width, 0)
    if pad_h or pad_w:  # smaller than the tile: one window along that axis, cropped back at the end
        images = nn.functional.pad(images, (0, pad_w, 0, pad_h))
    big_h, big_w = images.shape[-2:]
    weights = blend_weights(tile, blend).to(images.device)
    ys = window_starts(big_h, h, max(1, round(h * (1 - overlap))))
    xs = window_starts(big_w, w, max(1, round(w * (1 - overlap))))
    windows = [(i, y, x) for i in range(n) for y in ys for x in xs]
    norm = torch.zeros(big_h, big_w, device=images.device)
    for y in ys:
        for x in xs:
            norm[y : y + h, x : x + w] += weights
    out = None
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        logits = model(torch.stack([images[i, :, y : y + h, x : x + w] for i, y, x in chunk])).float()
        if logits.dim() != 4 or logits.shape[0] != len(chunk) or tuple(logits.shape[-2:]) != (h, w):
            raise ValueError(f"tiled_predict: the model gave {tuple(logits.shape)} for {len(chunk)} windows {tile}")
        if out is None:
            out = torch.zeros(n, logits.shape[1], big_h, big_w, device=images.device)
        for (i, y, x), window in zip(chunk, logits):
            out[i, :, y : y + h, x : x + w] += window * weights
    return (out / norm)[..., :height, :width]


class Tiled(nn.Module):
    """``model`` applied by :func:`tiled_predict`: ``forward(images float (N, C, H, W))`` -> float32 logits
    ``(N, K, H, W)``. ``tile`` ``(h, w)``, ``overlap``, ``blend``, ``batch_size``: as there.

    Raises:
        ValueError: see :func:`tiled_predict` (at the first forward; the flags are checked by
            :func:`check_tile_arguments`).
    """

    def __init__(self, model: nn.Module, tile, overlap: float = 0.25, blend: str = "gaussian", batch_size: int = 4):
        super().__init__()
        self.model, self.tile, self.overlap, self.blend, self.batch_size = (
            model,
            tuple(tile),
            overlap,
            blend,
            batch_size,
        )
        self.train(model.training)  # a wrapper of an eval-mode model reads as one

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return tiled_predict(self.model, images, self.tile, self.overlap, self.blend, self.batch_size)


def add_tile_arguments(parser) -> None:
    """Add ``--tile H W`` (default off: whole images), ``--overlap F`` (0.25) and ``--tile_blend`` (gaussian)."""
    parser.add_argument(
        "--tile",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="predict in sliding windows of H x W pixels, blended; unset: the whole image at once",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.25, help="with --tile: fraction of a window shared with the next, [0, 1)"
    )
    parser.add_argument(
        "--tile_blend",
        default="gaussian",
        help="with --tile: weight of a window's pixels, gaussian (sigma 1/8 of the tile) or linear (a ramp)",
    )


def check_tile_arguments(args) -> None:
    """Refuse bad ``--tile``/``--overlap``/``--tile_blend`` values of ``args`` (from :func:`add_tile_arguments`).

    Raises:
        ConfigError: one line naming the flag, e.g. ``"--overlap=1.0: must be >= 0 and < 1"``.
    """
    if args.tile is not None:
        check(len(args.tile) == 2 and min(args.tile) >= 1, "tile", args.tile, "must be two sizes H W, each >= 1")
    check(math.isfinite(args.overlap) and 0 <= args.overlap < 1, "overlap", args.overlap, "must be >= 0 and < 1")
    check(args.tile_blend in BLENDS, "tile_blend", args.tile_blend, f"must be one of {', '.join(BLENDS)}")


def describe_tiling(tile, overlap: float, blend: str) -> str:
    """One line for the output, e.g. ``"predicted in 256x256 windows (overlap 0.25, gaussian blend)"``."""
    return f"predicted in {tile[0]}x{tile[1]} windows (overlap {overlap:g}, {blend} blend)"

"""ELPV: real electroluminescence images of solar cells, shipped by the ``elpv-dataset`` package.

Deitsch et al., "Automatic classification of defective photovoltaic module
cells in electroluminescence images", Solar Energy 185 (2019): 2,624 grayscale
300x300 cells of mono- and polycrystalline modules, each labelled with a
defect probability of 0, 1/3, 2/3 or 1 by experts. The paper trains on 75% of
the cells and tests on 25%; its CNN reaches 88.42% accuracy and its SVM 82.44%.

Labels (``--elpv_task``): ``4class`` maps the probability ``p`` to
``round(3 p)`` (0..3); ``binary`` maps ``p >= 0.5`` to 1 (defective), else 0
(functional). The test split takes 25% of every (probability, type) stratum,
drawn with ``--seed``, so both splits keep the data's class and type mix.
"""

import functools
import os

import numpy as np
import torch

from base.errors import DataError
from data.splits import stratified_split_indices

TASKS = ("4class", "binary")
CLASS_NAMES = {"4class": ["p=0", "p=1/3", "p=2/3", "p=1"], "binary": ["functional", "defective"]}
TEST_FRACTION = 0.25
#: Cached cells are kept up to this side: 2,624 x 128 x 128 bytes is 43 MB (300x300 would be 236 MB).
CACHE_MAX_SIDE = 128
#: Part of the cache file's name: change it when what load_elpv computes from the package changes.
CACHE_FORMAT = 1


@functools.lru_cache(maxsize=1)
def _raw():
    """``(images uint8 (2624, 300, 300), probabilities float64 (2624,), types str (2624,))``, read once."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise DataError("--data_type ELPV needs the elpv-dataset package: pip install elpv-dataset") from None
    images, probs, types = load_dataset()
    return images, probs, types


def cache_path(image_size):
    """Where the cells resized to ``image_size`` are cached: ``$VISION_TRAINER_CACHE`` (default
    ``~/.cache/vision-trainer``)/``elpv-<package version>-<side>-v<CACHE_FORMAT>.npz``, or ``None``
    past :data:`CACHE_MAX_SIDE` or without the package."""
    from importlib import metadata

    try:
        version = metadata.version("elpv-dataset")
    except metadata.PackageNotFoundError:
        return None
    if image_size > CACHE_MAX_SIDE:
        return None
    folder = os.environ.get("VISION_TRAINER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vision-trainer")
    return os.path.join(folder, f"elpv-{version}-{image_size}-v{CACHE_FORMAT}.npz")


def _resized(image_size):
    """``(pixels uint8 (N, 1, s, s), probabilities, types)``; decoding the 2,624 PNGs takes ~5 s, so the
    resized cells are cached (:func:`cache_path`) and read back in ~0.1 s. A cache file that cannot be
    read or has the wrong shape is ignored and rewritten; one that cannot be written is skipped."""
    path = cache_path(image_size)
    if path and os.path.isfile(path):
        try:
            with np.load(path) as cached:
                pixels, probs, types = cached["pixels"], cached["probs"], cached["types"]
            if pixels.shape == (len(probs), 1, image_size, image_size) and len(types) == len(probs):
                return torch.from_numpy(pixels), probs, types
        except (OSError, ValueError, KeyError):
            pass
    images, probs, types = _raw()
    pixels = torch.from_numpy(images).unsqueeze(1)  # uint8 (N, 1, 300, 300)
    if image_size != pixels.shape[-1]:
        from torchvision.transforms import v2  # here, not at import: scripts start faster without torchvision

        pixels = torch.cat(
            [v2.functional.resize(chunk, [image_size, image_size], antialias=True) for chunk in pixels.split(256)]
        )
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                np.savez(f, pixels=pixels.numpy(), probs=np.asarray(probs), types=np.asarray(types, dtype=str))
            os.replace(tmp, path)  # whole or absent: another process may read it at any time
        except OSError:
            pass
    return pixels, probs, types


def elpv_labels(probs, task):
    """int64 ``(N,)`` labels from defect probabilities ``probs`` (float ``(N,)``) for ``task``."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = (probs >= 0.5) if task == "binary" else np.rint(probs * 3)
    return torch.from_numpy(labels.astype(np.int64))


def stratified_test_split(probs, types, seed):
    """``(pool indices, test indices)``: a quarter of the cells, a quarter of every (probability, type) stratum.

    See :func:`data.splits.stratified_split_indices`: the test split has exactly
    ``round(0.25 N)`` cells (656 of 2,624, as in the paper) and depends only on ``seed``.
    """
    return stratified_split_indices([(round(float(p) * 3), str(t)) for p, t in zip(probs, types)], TEST_FRACTION, seed)


def load_elpv(task, image_size, seed):
    """The ELPV cells resized to ``image_size`` and split 75/25 as in the paper.

    Returns:
        ``(pool_images, pool_labels, pool_types, test_images, test_labels, test_types, class_names)``:
        images uint8 ``(N, 1, image_size, image_size)`` (antialiased resize of the
        300x300 cells), labels int64 ``(N,)``, types a list of ``"mono"``/``"poly"``.

    Raises:
        DataError: the ``elpv-dataset`` package is missing, or ``task`` is unknown.
    """
    if task not in TASKS:
        raise DataError(f"--elpv_task {task!r}: expected one of {list(TASKS)}")
    pixels, probs, types = _resized(image_size)
    labels = elpv_labels(probs, task)
    pool, test = stratified_test_split(probs, types, seed)
    types = [str(t) for t in types]
    return (
        pixels[pool],
        labels[pool],
        [types[i] for i in pool],
        pixels[test],
        labels[test],
        [types[i] for i in test],
        CLASS_NAMES[task],
    )

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

import numpy as np
import torch

from base.errors import DataError
from data.splits import stratified_split_indices

TASKS = ("4class", "binary")
CLASS_NAMES = {"4class": ["p=0", "p=1/3", "p=2/3", "p=1"], "binary": ["functional", "defective"]}
TEST_FRACTION = 0.25


@functools.lru_cache(maxsize=1)
def _raw():
    """``(images uint8 (2624, 300, 300), probabilities float64 (2624,), types str (2624,))``, read once."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise DataError("--data_type ELPV needs the elpv-dataset package: pip install elpv-dataset") from None
    images, probs, types = load_dataset()
    return images, probs, types


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
    return stratified_split_indices([(round(float(p) * 3), str(t)) for p, t in zip(probs, types)],
                                    TEST_FRACTION, seed)


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
    images, probs, types = _raw()
    pixels = torch.from_numpy(images).unsqueeze(1)  # uint8 (N, 1, 300, 300)
    if image_size != pixels.shape[-1]:
        from torchvision.transforms import v2  # here, not at import: scripts start faster without torchvision

        pixels = torch.cat([v2.functional.resize(chunk, [image_size, image_size], antialias=True)
                            for chunk in pixels.split(256)])
    labels = elpv_labels(probs, task)
    pool, test = stratified_test_split(probs, types, seed)
    types = [str(t) for t in types]
    return (pixels[pool], labels[pool], [types[i] for i in pool],
            pixels[test], labels[test], [types[i] for i in test], CLASS_NAMES[task])

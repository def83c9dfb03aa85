"""Multi-label image files listed in ``<data_dir>/labels.csv`` (``--data_type ImageCSV``).

The file's header is ``filename,<label_1>,...,<label_K>``; each row names an image (a path relative to
``data_dir``) and gives each label 0 or 1::

    filename,cat,dog,outdoor
    img/001.png,1,0,1
    img/002.png,0,1,0

Images are decoded per item as an ImageFolder's are (:class:`data.images.ImageFiles`: any mode made 8-bit
RGB, an unreadable file a :class:`base.errors.BadImageError` that ``--bad_images`` handles); items are
``(uint8 (3, H, W), float32 (K,) 0/1 target)``, so the default collate gives targets ``(N, K)``.
"""

import csv
import os

import torch

from base.errors import DataError
from data.images import ImageFiles, read_image

CSV_NAME = "labels.csv"
LAYOUT = f"{CSV_NAME} with the header filename,<label_1>,...,<label_K> and rows of a path and 0/1 values"


class MultiLabelImageFiles(ImageFiles):
    """:class:`data.images.ImageFiles` whose labels are float32 ``(K,)`` 0/1 vectors.

    Args:
        samples: list of ``(path, float32 (K,) target)``.
        transform, mode: as :class:`data.images.ImageFiles`.

    Items are ``(uint8 (C, H, W), float32 (K,))``.
    """

    def __getitem__(self, index):
        path, target = self.samples[index]
        return self.transform(read_image(path, self.mode)), target

    def targets(self, indices=None):
        """float32 ``(n, K)``: the targets of ``indices`` (all when None), in that order."""
        indices = range(len(self.samples)) if indices is None else indices
        return torch.stack([self.samples[i][1] for i in indices])


def csv_path(data_dir):
    """``<data_dir>/labels.csv``."""
    return os.path.join(data_dir, CSV_NAME)


def load_image_csv(data_dir, transform):
    """Read ``<data_dir>/labels.csv``; return ``(pool, label_names)``.

    ``pool`` is a :class:`MultiLabelImageFiles` of every row, in the file's order, decoded through
    ``transform`` (see :mod:`data.transforms`); ``label_names`` the header's label columns.

    Raises:
        DataError: one line naming the file (and the line, counting the header as line 1): no
            ``labels.csv``; a header that does not start with ``filename`` or has no label column; a
            label name given twice or empty; a row with another number of fields; a value other than
            ``0``/``1``; an image file that does not exist; one file listed twice; no rows.
    """
    path = csv_path(data_dir)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; --data_type ImageCSV reads {LAYOUT}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from None
    if not rows or not rows[0] or rows[0][0].strip() != "filename":
        found = ",".join(rows[0]) if rows and rows[0] else "nothing"
        raise DataError(f"{path}, line 1: the header is {found!r}; expected {LAYOUT}")
    names = [name.strip() for name in rows[0][1:]]
    if not names:
        raise DataError(f"{path}, line 1: the header has no label column; expected {LAYOUT}")
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{path}, line 1: label column {i + 1} has no name")
        if name in names[:i]:
            raise DataError(f"{path}, line 1: the label {name!r} is named twice; each label column needs its own name")
    samples, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:  # a blank line
            continue
        if len(row) != len(names) + 1:
            raise DataError(f"{path}, line {line}: {len(row)} fields; the header has {len(names) + 1}")
        values = []
        for name, value in zip(names, row[1:]):
            if value.strip() not in ("0", "1"):
                raise DataError(f"{path}, line {line}: {name} is {value!r}; expected 0 or 1")
            values.append(float(value.strip()))
        image = os.path.join(data_dir, row[0].strip())
        if not os.path.isfile(image):
            raise DataError(f"{path}, line {line}: {row[0]!r} does not exist (no file {image})")
        real = os.path.realpath(image)
        if real in seen:
            raise DataError(
                f"{path}, line {line}: {row[0]!r} is the file of line {seen[real]} again; a sample has one row"
            )
        seen[real] = line
        samples.append((image, torch.tensor(values, dtype=torch.float32)))
    if not samples:
        raise DataError(f"{path}: no rows after the header; expected {LAYOUT}")
    return MultiLabelImageFiles(samples, transform), names

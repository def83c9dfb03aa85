"""The ELPV solar cells as a multi-label ``--data_type ImageCSV`` folder: real data, shipped with the install.

    python -m data.make_elpv_csv --out Dataset/ELPV_labels

writes ``OUT/cells/<index>.png`` (grey, ``--size`` x ``--size``, the antialiased resize of the 300x300
cells that ``--data_type ELPV`` reads; :mod:`data.elpv`) and ``OUT/labels.csv``::

    filename,defective,poly
    cells/0000.png,1,0

Two labels per cell, from the dataset's own annotations (Deitsch et al. 2019): ``defective`` (the
experts' defect probability >= 0.5, the ``--elpv_task binary`` label) and ``poly`` (a polycrystalline
cell; 0 for monocrystalline). They are independent facts about a cell, so a cell has none, one or both:
a small real multi-label problem to try ``--data_type ImageCSV`` on (see docs/MULTILABEL.md).
"""

import argparse
import csv
import os

from PIL import Image

from data.elpv import _resized, elpv_labels

LABELS = ("defective", "poly")


def write_elpv_csv(out, size=128, limit=None):
    """Write the cells and ``labels.csv`` into ``out`` (created if missing); returns the csv's path.

    Args:
        out: the folder (a ``--data_dir`` for ``--data_type ImageCSV``).
        size: side of the written cells in pixels.
        limit: write only the first ``limit`` cells (``None``: all 2,624).

    Raises:
        DataError: the ``elpv-dataset`` package is missing.
    """
    pixels, probs, types = _resized(size)
    defective = elpv_labels(probs, "binary").tolist()
    count = len(probs) if limit is None else min(limit, len(probs))
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    path = os.path.join(out, "labels.csv")
    with open(path, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["filename", *LABELS])
        for i in range(count):
            name = f"cells/{i:04d}.png"
            Image.fromarray(pixels[i, 0].numpy()).save(os.path.join(out, name))
            rows.writerow([name, defective[i], int(str(types[i]) == "poly")])
    return path


def main(argv=None):
    """Command line: ``--out`` (required), ``--size`` (default 128), ``--limit``."""
    parser = argparse.ArgumentParser(description="Write the ELPV cells as an ImageCSV multi-label folder.")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--size", type=int, default=128, help="side of the written cells in pixels (1..300)")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N cells")
    args = parser.parse_args(argv)
    if not 1 <= args.size <= 300:
        parser.error(f"argument --size: {args.size} is not in 1..300")
    if args.limit is not None and args.limit < 1:
        parser.error(f"argument --limit: {args.limit} must be >= 1")
    path = write_elpv_csv(args.out, args.size, args.limit)
    print(f"wrote {path} and its cells ({', '.join(LABELS)})")


if __name__ == "__main__":
    main()

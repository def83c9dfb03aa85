"""Tiny generated multi-label data for the tests: RGB 16x16 PNGs listed in labels.csv.

Each of the three labels is a visible colour patch at its own place (red top-left, green top-right, blue
bottom-centre) on a noisy background of a random tint per image, so an untrained network's scores (nearly a
linear function of the mean colour) rank the labels little better than chance; each label is present with
probability 1/2, independently.
"""

import numpy as np
from PIL import Image

LABELS = ("red", "green", "blue")
PATCHES = {  # label -> (rows, columns, RGB)
    "red": (slice(1, 7), slice(1, 7), (230, 20, 20)),
    "green": (slice(1, 7), slice(9, 15), (20, 230, 20)),
    "blue": (slice(9, 15), slice(5, 11), (20, 20, 230)),
}


def make_multilabel_csv(root, n=120, seed=0):
    """Write ``n`` images under ``root/img/`` and ``root/labels.csv``; return ``(root, targets int (n, 3))``.

    Written once: a second call with the same ``root`` reads the targets back from the csv.
    """
    csv_file = root / "labels.csv"
    if csv_file.exists():
        rows = csv_file.read_text().splitlines()[1:]
        return root, np.array([[int(v) for v in row.split(",")[1:]] for row in rows])
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    targets = rng.integers(0, 2, (n, len(LABELS)))
    lines = ["filename," + ",".join(LABELS)]
    for i, target in enumerate(targets):
        tint = rng.integers(0, 256, 3)
        pixels = np.clip(tint + rng.integers(-25, 26, (16, 16, 3)), 0, 255).astype(np.uint8)
        for name, on in zip(LABELS, target):
            if on:
                rows, cols, colour = PATCHES[name]
                pixels[rows, cols] = colour
        Image.fromarray(pixels).save(root / "img" / f"{i:03d}.png")
        lines.append(f"img/{i:03d}.png," + ",".join(str(int(v)) for v in target))
    csv_file.write_text("\n".join(lines) + "\n")
    return root, targets


def hand_scores(seed=1, n=11, labels=4):
    """``(logits float32 (n, labels), targets float32 (n, labels))``: random logits, random 0/1 targets whose
    last label has no positive."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, labels, generator=gen)
    targets = (torch.rand(n, labels, generator=gen) > 0.5).float()
    targets[:, -1] = 0
    return logits, targets


def meter_worker(rank, world, init_file, out, shares):
    """One gloo process of a meter test: rank ``r`` adds ``hand_scores()``'s rows ``shares[r]`` (in two batches
    where it has more than one row) and saves its :meth:`MultiLabelMeter.compute` to ``<out>.<rank>``."""
    import torch

    from utils.multilabel_metrics import MultiLabelMeter

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    logits, targets = hand_scores()
    mine = list(shares[rank])
    meter = MultiLabelMeter(targets.shape[1], threshold=0.4)
    for part in (mine[: len(mine) // 2], mine[len(mine) // 2 :]):
        if part:
            meter.update(logits[part], targets[part], torch.tensor(0.5 + rank))
    torch.save(meter.compute(), f"{out}.{rank}")
    torch.distributed.destroy_process_group()

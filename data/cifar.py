"""CIFAR-10 from its official Python-pickle files, read by torchvision.

Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny Images": 50,000 training and
10,000 test images, 32x32 RGB, 10 classes. Layout expected in ``--data_dir`` (what the official
``cifar-10-python.tar.gz`` unpacks to, and what ``--download true`` fetches)::

    <data_dir>/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
"""

import os

from base.errors import DataError

FOLDER = "cifar-10-batches-py"
FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta")


def load_cifar10(data_dir, train, download):
    """One split as ``(images uint8 (N, 3, 32, 32), labels int64 (N,), class_names)``.

    torchvision's ``CIFAR10`` reads the files; its MD5 check of each file is replaced by an
    existence check (a truncated or foreign file still fails, when unpickled, with this module's
    error), so copies made by other tools are read too.

    Raises:
        DataError: files missing (names the folder and the files), the download failed, or a file
            is not a CIFAR-10 batch.
    """
    import torch
    import torchvision  # here, not at import: scripts start ~1 s faster without it

    base = torchvision.datasets.CIFAR10

    class Files(base):  # md5 None: torchvision's check_integrity then only asks that the file exists
        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    folder = os.path.join(data_dir, FOLDER)
    try:
        ds = Files(root=data_dir, train=train, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted" (or a failed download)
        missing = [f for f in FILES if not os.path.isfile(os.path.join(folder, f))]
        if download:
            raise DataError(f"could not download CIFAR-10 into {folder}: {exc}") from None
        raise DataError(
            f"CIFAR-10 files not found in {folder}: missing {', '.join(missing)}; pass --download true to fetch them"
        ) from None
    except Exception as exc:  # noqa: BLE001 - unpickling a foreign file can fail in many ways
        raise DataError(f"cannot read CIFAR-10 files in {folder}: {type(exc).__name__}: {exc}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # torchvision keeps (N, H, W, C)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    if images.shape[1:] != (3, 32, 32) or len(labels) != len(images) or len(images) == 0:
        raise DataError(
            f"CIFAR-10 in {folder}: {len(images)} images of shape {tuple(images.shape[1:])} and "
            f"{len(labels)} labels; expected equal, non-zero counts of 3x32x32 images"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= len(ds.classes):
        raise DataError(f"CIFAR-10 in {folder}: labels outside 0..{len(ds.classes) - 1}")
    return images, labels, list(ds.classes)

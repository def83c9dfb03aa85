"""``--bad_images skip``: drop unreadable samples, list them, stop past a limit."""

import os

from torch.utils.data import Dataset, default_collate

from base.errors import BadImageError, DataError


class BadSampleFilter(Dataset):
    """Wrap a dataset so a sample raising :class:`BadImageError` becomes ``None``.

    The file's path is appended to ``log_path`` once: a path already listed (by an
    earlier epoch, another DataLoader worker or an earlier launch of a resumed run) is
    not written again. Any process may append (a short ``O_APPEND`` write is atomic);
    two processes failing on the same file at the same instant could both list it,
    which :class:`BadSampleLog` absorbs by counting distinct paths.
    No other sample is substituted, so the batch is just smaller.
    """

    def __init__(self, dataset, log_path):
        self.dataset, self.log_path = dataset, log_path

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except BadImageError as exc:
            self._list_once(exc.path)
            return None

    def _list_once(self, path):
        # Read back, not a set in memory: workers are new processes each epoch (and on resume),
        # and the file is the only state they share. Failures are rare, so the read is cheap.
        try:
            with open(self.log_path, encoding="utf-8") as f:
                if any(line.strip() == path for line in f):
                    return
        except FileNotFoundError:
            pass
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(path + "\n")


def collate_good_samples(samples, collate=default_collate):
    """``collate`` of the samples that are not ``None``; ``None`` when none is left."""
    good = [s for s in samples if s is not None]
    return collate(good) if good else None


class BadSampleLog:
    """Reads ``bad_images.txt`` back in the main process and enforces ``--max_bad_images``.

    Args:
        path: the run folder's ``bad_images.txt``.
        limit: the most distinct unreadable files tolerated.
    """

    def __init__(self, path, limit):
        self.path, self.limit, self._size, self.paths = path, limit, 0, set()

    def check(self):
        """Re-read the list if it grew; returns the newly listed paths.

        Raises:
            DataError: more than ``limit`` distinct files are listed.
        """
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size == self._size:
            return []
        self._size = size
        with open(self.path, encoding="utf-8") as f:
            listed = {line.strip() for line in f if line.strip()}
        new, self.paths = sorted(listed - self.paths), listed
        if len(listed) > self.limit:
            raise DataError(
                f"{len(listed)} unreadable images, more than --max_bad_images={self.limit}; "
                f"they are listed in {self.path}"
            )
        return new

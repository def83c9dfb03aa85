"""An image-classification folder (``<root>/<class>/**/<image>``) as ``(path, label)`` samples.

Read as torchvision's ``ImageFolder`` reads it (class folders sorted by name; in
each, the folders under it sorted by path, their files sorted by name; symbolic
links followed), with three differences:

* hidden files and folders (names starting with ``.``: ``.ipynb_checkpoints/``,
  ``.DS_Store``, macOS ``._x.png`` copies) are neither classes nor images;
* a link to a folder that holds it (a loop, e.g. ``ln -s .. cat/up``) is refused,
  not followed until the path is too long (which read every image ~40 times over,
  in every split);
* each real file is one sample, however many paths lead to it (paths are resolved
  with ``os.path.realpath``); one file in two classes, or in ``train/`` and
  ``test/``, is refused. Hard links are separate files: they are not resolved.
"""

import errno
import os

from base.errors import DataError
from data.images import ImageFiles

LAYOUT = "one sub-folder per class holding image files (.png, .jpg, ...)"


def visible(name):
    """False for hidden names (``.ipynb_checkpoints``, ``.DS_Store``, macOS ``._x.png`` copies)."""
    return not name.startswith(".")


def class_folders(directory):
    """Sorted names of the visible folders (or links to folders) in ``directory``."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and visible(e.name))


def load_image_folder(data_dir, transform):
    """Find class folders and their images; return ``(pool, test or None, class_names)``.

    ``<data_dir>/test`` is the test split only next to ``<data_dir>/train``;
    without ``train/`` every sub-folder of ``data_dir`` is a class. ``test/`` uses
    ``train/``'s class indices, so a class missing from ``test/`` does not shift the
    labels of the others. ``pool`` and ``test`` are :class:`data.images.ImageFiles`
    (``(uint8 (3, H, W), label)`` items) decoded through ``transform`` (see :mod:`data.transforms`).

    Raises:
        DataError: no class folders or no images, fewer than two classes (a one-class
            classifier is trivially 100% right), ``test/`` has a class that ``train/`` lacks,
            a link loop, or one file in two classes or in both ``train/`` and ``test/``
            (see :func:`find_images`).
    """
    train_dir = os.path.join(data_dir, "train")
    root = train_dir if os.path.isdir(train_dir) else data_dir
    try:
        classes = class_folders(root)
    except OSError as exc:
        raise DataError(f"cannot read the folder {root}: {exc.strerror or exc}") from None
    if not classes:
        raise DataError(f"no images found in {root}: expected {LAYOUT} (no class folder)")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    taken = {}  # real path -> (path, where): the training pool's files, which test/ must not hold again
    pool = find_images(root, classes, class_to_idx, taken)
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class folder {classes}: classification needs at least two ({LAYOUT})"
        )
    test = None
    test_dir = os.path.join(data_dir, "test")
    if root == train_dir and os.path.isdir(test_dir):
        extra = sorted(set(class_folders(test_dir)) - set(classes))
        if extra:
            raise DataError(f"{test_dir} has class folders {extra} that {train_dir} lacks")
        samples = find_images(
            test_dir,
            [c for c in classes if os.path.isdir(os.path.join(test_dir, c))],
            class_to_idx,
            taken,
            allow_empty=True,
        )
        if not samples:
            raise DataError(f"no images found in {test_dir}: expected {LAYOUT}")
        test = ImageFiles(samples, transform)
    return ImageFiles(pool, transform), test, classes


def find_images(root, classes, class_to_idx, taken=None, allow_empty=False):
    """The samples of the class folders ``classes`` of ``root``.

    Args:
        root: the folder holding one sub-folder per class.
        classes: names of the class folders to read.
        class_to_idx: ``{class name: label}``.
        taken: ``{real path: (path, where)}`` of files already in another split (e.g. the
            training pool when reading ``test/``); updated with this call's files.
        allow_empty: a class folder without images is accepted (``test/`` may lack a class).

    Returns:
        list of ``(path, int label)``, in the order described in the module docstring,
        each real file once.

    Raises:
        DataError: a link loop (names the link), one file in two classes or splits (names
            both paths), a class folder without images, or a folder that cannot be read.
    """
    taken = {} if taken is None else taken
    samples, empty = [], []
    for name in classes:
        folder, here = os.path.join(root, name), f"class {name!r} of {root}"
        found = 0
        for path, real in _images_under(folder):
            if real in taken:
                first, where = taken[real]
                if where == here:
                    continue  # another path to a file this class already has: one sample
                raise DataError(
                    f"{path} and {first} are one file ({real}), in {here} and in {where}: "
                    f"a sample has one label and one split; remove one of the two"
                )
            taken[real] = (path, here)
            samples.append((path, class_to_idx[name]))
            found += 1
        if not found:
            empty.append(name)
    if empty and not allow_empty:
        raise DataError(f"no images found in {root}: expected {LAYOUT} (no image in {', '.join(empty)})")
    return samples


def _images_under(folder):
    """``(path, real path)`` of each visible image file under ``folder``, links followed, loops refused."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    real = os.path.realpath(folder)
    above, parent = {real}, os.path.dirname(real)
    while parent not in above:  # the real folders above too: a link to any of them is a loop
        above.add(parent)
        parent = os.path.dirname(parent)
    found = []  # (folder path, [(file path, real path)]) of each folder
    _scan(folder, real, frozenset(above), None, found, IMG_EXTENSIONS, has_file_allowed_extension)
    for _, files in sorted(found, key=lambda item: item[0]):  # by path, as sorted(os.walk(...)) in torchvision
        yield from files


def _scan(folder, real, above, link, found, extensions, allowed):
    """Append ``folder``'s image files to ``found`` and recurse into its visible sub-folders.

    ``real``: ``folder``'s real path; ``above``: the real paths of the folders it lies in
    (a sub-folder among them is a loop); ``link``: the last symbolic link on the way here.
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    files = []
    for entry in entries:
        if not visible(entry.name):
            continue
        is_link = entry.is_symlink()
        # realpath only for links: one lstat per path part, for each of a million files otherwise
        entry_real = os.path.realpath(entry.path) if is_link else os.path.join(real, entry.name)
        try:
            is_dir = entry.is_dir()  # follows links
        except OSError as exc:  # e.g. a link to itself: ELOOP
            if exc.errno == errno.ELOOP:
                raise DataError(
                    f"{entry.path}: a symbolic link loop ({exc.strerror}); remove the link or point it elsewhere"
                ) from None
            raise DataError(f"{entry.path}: cannot read it ({exc.strerror or exc})") from None
        if is_dir:
            if entry_real in above:
                culprit = entry.path if is_link or link is None else link
                raise DataError(
                    f"{culprit}: a symbolic link loop ({entry.path} is {entry_real}, a folder "
                    f"that holds it); remove the link or point it elsewhere"
                )
            _scan(
                entry.path,
                entry_real,
                above | {entry_real},
                entry.path if is_link else link,
                found,
                extensions,
                allowed,
            )
        elif allowed(entry.name, extensions):
            files.append((entry.path, entry_real))
    found.append((folder, files))

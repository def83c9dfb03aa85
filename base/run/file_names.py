"""Flag values as parts of file names: one rule for every file a run names after a flag.

A flag value such as ``--model_type timm/resnet18`` is not a file name: its
slash would name a folder that does not exist. :func:`file_name_part` maps a
value to a part that is a plain name on Linux, macOS and Windows, so a
checkpoint ``<part>_best_ckpt.pth`` stays in the run folder. Whatever looks
files up by name (resume, step-checkpoint pruning) builds the name with the
same function, so writers and readers agree.
"""

import hashlib
import re

#: Characters kept as they are; any other (``/ \\ : * ? " < > |``, spaces, control and non-ASCII
#: characters) becomes ``-``. ``_`` and ``.`` stay: zoo names such as ``vit_ti_16`` and timm tags
#: such as ``resnet18.a1_in1k`` keep their spelling.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
#: Longest part returned (characters): file names are limited to 255 bytes, and a part is followed
#: by a tag and an extension (``_step1000000_ckpt.pth``).
MAX_LENGTH = 120


def file_name_part(value):
    """``value`` (a flag value, any type) as a string that can be one part of a file name.

    ``timm/resnet18`` -> ``timm-resnet18``; names that are already safe are
    returned unchanged (``vit_ti_16``, ``UNet``). Leading dots are replaced
    too, so no part names a hidden file, ``.`` or ``..``. A value longer than
    :data:`MAX_LENGTH` is cut and ends with 8 hex digits of its SHA-256, so
    two long values that share a beginning still get different names.

    Raises:
        ValueError: ``value`` is empty (``""``): it names nothing.
    """
    text = str(value)
    if not text:
        raise ValueError("an empty value cannot be part of a file name")
    part = _UNSAFE.sub("-", text)
    part = re.sub(r"^\.+", lambda m: "-" * len(m.group()), part)
    if len(part) > MAX_LENGTH:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        part = f"{part[: MAX_LENGTH - 9]}-{digest}"
    return part

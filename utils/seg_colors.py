"""Colours for segmentation pictures: the class palette and the error panel (torch only, no matplotlib).

The palette is PASCAL VOC's (``labelcolormap`` of the VOC development kit, Everingham et al., "The
PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010): class 0 black, then colours made from the
bits of the class index, fixed for every run and distinct for the first 256 classes; the ignore label
is drawn in VOC's border colour (224, 224, 192).
"""

import torch

#: VOC's colour for the "void" label on object borders; used for ``--ignore_index`` pixels.
IGNORE_COLOUR = (224, 224, 192)
#: Error panel colours: saturated and bright, over a dark grey copy of the image (see :func:`error_panel`).
FP_COLOUR, FN_COLOUR, WRONG_COLOUR = (255, 0, 255), (0, 255, 255), (255, 255, 0)


def voc_palette(num_colours):
    """The first ``num_colours`` colours of the PASCAL VOC palette, as ``[[r, g, b], ...]`` ints (JSON-able).

    Colour ``k``'s red, green and blue take bits 0, 1 and 2 of ``k``, then of ``k >> 3``, ..., placed
    from the most significant bit down: ``0 -> (0, 0, 0)``, ``1 -> (128, 0, 0)``, ``2 -> (0, 128, 0)``.
    """
    palette = []
    for k in range(num_colours):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def colorize(labels, palette, ignore_index=None):
    """uint8 ``(3, H, W)`` picture of a class map: each class in its palette colour, ignored pixels in
    :data:`IGNORE_COLOUR`, any other value black.

    Args:
        labels: integer ``(H, W)``.
        palette: ``[[r, g, b], ...]``, one per class.
        ignore_index: the label drawn as ignored, or ``None``.
    """
    labels = labels.long().cpu()
    table = torch.zeros(256, 3, dtype=torch.uint8)
    table[: len(palette)] = torch.tensor(palette, dtype=torch.uint8)
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = torch.tensor(IGNORE_COLOUR, dtype=torch.uint8)
    return table[labels.clamp(0, 255)].permute(2, 0, 1).contiguous()


def error_panel(image, target, pred, ignore_index=None):
    """uint8 ``(3, H, W)``: where the prediction is wrong, over a dimmed grey copy of ``image``.

    The image is made grey (ITU-R 601 luma) and darkened to 40 %: no colour of the photo survives and
    nothing in it is bright, so the saturated, bright error colours stay visible on any image (a red
    error mark would vanish on a red car; a dark one on a dark road). Background is class 0:

    * magenta :data:`FP_COLOUR`: false positive, truth background, predicted a class;
    * cyan :data:`FN_COLOUR`: false negative, truth a class, predicted background;
    * yellow :data:`WRONG_COLOUR`: truth and prediction two different non-background classes (K >= 3).

    For a binary mask (truth and prediction in {0, 1}) only the first two occur. Ignored pixels stay grey.

    Args:
        image: uint8 ``(3, H, W)`` pixels.
        target, pred: integer or bool ``(H, W)`` class maps.
        ignore_index: truth label left out, or ``None``.
    """
    image = image.cpu().float()
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]) * 0.4
    out = grey.round().to(torch.uint8).expand(3, -1, -1).clone()
    target, pred = target.long().cpu(), pred.long().cpu()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    wrong = valid & (target != pred)
    for where, colour in (
        (wrong & (target == 0), FP_COLOUR),
        (wrong & (pred == 0), FN_COLOUR),
        (wrong & (target != 0) & (pred != 0), WRONG_COLOUR),
    ):
        out[:, where] = torch.tensor(colour, dtype=torch.uint8).view(3, 1)
    return out

"""U-Net and UNet++ for binary (or few-class) segmentation of images of any size >= 16x16.

Every model maps ``images: float32 (N, C, H, W)`` to ``logits: float32 (N, out_channels, H, W)``
with the input's ``H, W`` (apply a sigmoid for probabilities). The one exception is
``UNetPlusPlus(deep_supervision=True)`` in training mode, which returns a list of 4 such tensors.

Sizes: both networks pool 4 times, so ``H, W >= MIN_INPUT_SIZE = 16`` (the deepest level is then
at least 1x1). Odd sizes work: pooling floors (e.g. 131 -> 65 -> 32), so the upsampled decoder
tensor can be one pixel smaller than its skip connection; :func:`pad_to` zero-pads it on the
bottom/right to the skip's size before concatenation.
"""

import torch
import torch.nn.functional as F
from torch import nn

MIN_INPUT_SIZE = 16
DEPTH = 4  # poolings; widths are base * 1, 2, 4, 8, 16


def check_input_size(images):
    """Raise ``ValueError`` when ``images`` (N, C, H, W) is smaller than 16 in H or W."""
    h, w = images.shape[-2:]
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise ValueError(f"segmentation input must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (H x W), got {h}x{w}")


def pad_to(x, ref):
    """Zero-pad ``x`` (N, C, h, w) on the bottom/right to ``ref``'s spatial size (H, W), h <= H, w <= W."""
    dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    return F.pad(x, [0, dw, 0, dh]) if dh or dw else x


def up2(x):
    """Bilinear x2 upsampling (``align_corners=False``)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class DoubleConv(nn.Sequential):
    """(3x3 conv, padding 1, BN, ReLU) twice: ``(N, cin, H, W) -> (N, cout, H, W)``."""

    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """The contracting path: returns the 5 feature maps ``X^{i,0}``, widths ``base * 2**i``."""

    def __init__(self, in_channels, widths):
        super().__init__()
        cins = (in_channels,) + tuple(widths[:-1])
        self.blocks = nn.ModuleList(DoubleConv(cin, cout) for cin, cout in zip(cins, widths))

    def forward(self, images):
        feats = [self.blocks[0](images)]
        for block in self.blocks[1:]:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", arXiv:1505.04597) with batch norm and same-padding convolutions.

    Input ``float32 (N, in_channels, H, W)``, ``H, W >= 16``; output logits
    ``float32 (N, out_channels, H, W)``.

    Args:
        in_channels: image channels.
        out_channels: logit channels (1 for binary segmentation).
        base_channels: width of the first level; level ``i`` has ``base_channels * 2**i``.
        upsample: ``"bilinear"`` (bilinear x2 upsampling, ``align_corners=False``, then a 1x1
            conv halving the channels) or ``"transpose"`` (``ConvTranspose2d`` k=2, s=2, halving them).
    Raises:
        ValueError: unknown ``upsample``; in ``forward``, an input smaller than 16x16.
    """

    def __init__(self, in_channels=3, out_channels=1, base_channels=32, upsample="bilinear"):
        super().__init__()
        if upsample not in ("bilinear", "transpose"):
            raise ValueError(f"upsample must be 'bilinear' or 'transpose', got {upsample!r}")
        widths = [base_channels * 2**i for i in range(DEPTH + 1)]
        self.encoder = Encoder(in_channels, widths)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for cin, cout in zip(widths[:0:-1], widths[-2::-1]):  # (16b, 8b), (8b, 4b), ...
            if upsample == "bilinear":
                up = nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 1)
                )
            else:
                up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
            self.ups.append(up)
            self.decoders.append(DoubleConv(2 * cout, cout))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, images):
        check_input_size(images)
        feats = self.encoder(images)
        x = feats.pop()
        for up, decoder in zip(self.ups, self.decoders):
            skip = feats.pop()
            x = decoder(torch.cat([skip, pad_to(up(x), skip)], dim=1))
        return self.head(x)


class UNetPlusPlus(nn.Module):
    """UNet++ (Zhou et al., 2018, "UNet++: A Nested U-Net Architecture for Medical Image
    Segmentation", arXiv:1807.10165), depth 4 (5 levels), with batch norm.

    Nodes: ``X^{i,0}`` is the U-Net encoder; for ``j >= 1``,
    ``X^{i,j} = DoubleConv(cat(X^{i,0}, ..., X^{i,j-1}, up(X^{i+1,j-1})))`` where ``up`` is bilinear
    x2 upsampling padded to ``X^{i,0}``'s size. ``X^{i,j}`` has ``base_channels * 2**i`` channels.

    Input ``float32 (N, in_channels, H, W)``, ``H, W >= 16``; output logits
    ``float32 (N, out_channels, H, W)``, except as noted for ``deep_supervision``.

    Args:
        in_channels, out_channels, base_channels: as for :class:`UNet`.
        deep_supervision: put a 1x1 head on each of ``X^{0,1..4}``. Then ``forward`` returns in
            training mode (``self.training``) the *list* of the 4 heads' logits, to be supervised
            each; in eval mode ONE tensor, the mean of the 4 heads' logits (the paper's "accurate
            mode"). Without it there is one head on ``X^{0,4}`` and ``forward`` always returns one
            tensor. :meth:`forward_heads` always returns the list.
    Raises:
        ValueError: in ``forward``, an input smaller than 16x16.
    """

    def __init__(self, in_channels=3, out_channels=1, base_channels=32, deep_supervision=False):
        super().__init__()
        self.deep_supervision = deep_supervision
        widths = [base_channels * 2**i for i in range(DEPTH + 1)]
        self.encoder = Encoder(in_channels, widths)
        self.nodes = nn.ModuleDict(
            {
                f"x{i}_{j}": DoubleConv(j * widths[i] + widths[i + 1], widths[i])
                for j in range(1, DEPTH + 1)
                for i in range(DEPTH + 1 - j)
            }
        )
        num_heads = DEPTH if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], out_channels, 1) for _ in range(num_heads))

    def forward_heads(self, images):
        """The heads' logits as a list: 4 tensors ``(N, out, H, W)`` for ``X^{0,1..4}`` with deep
        supervision, else ``[logits of X^{0,4}]``; the same in training and eval mode."""
        check_input_size(images)
        grid = [[f] for f in self.encoder(images)]  # grid[i][j] is X^{i,j}
        for j in range(1, DEPTH + 1):
            for i in range(DEPTH + 1 - j):
                up = pad_to(up2(grid[i + 1][j - 1]), grid[i][0])
                grid[i].append(self.nodes[f"x{i}_{j}"](torch.cat([*grid[i], up], dim=1)))
        tops = grid[0][1:] if self.deep_supervision else grid[0][DEPTH:]
        return [head(x) for head, x in zip(self.heads, tops)]

    def forward(self, images):
        logits = self.forward_heads(images)
        if not self.deep_supervision:
            return logits[0]
        return logits if self.training else torch.stack(logits).mean(dim=0)

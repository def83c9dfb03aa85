"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners") around a zoo ViT.

The encoder is torchvision's ``VisionTransformer`` of :mod:`model.zoo`, kept under its own names
(``conv_proj``, ``class_token``, ``encoder.*``), so an MAE state dict loads into the same ViT for
fine-tuning with only the ``decoder.*`` keys unexpected (and the classifier head missing). The
decoder is a light Transformer (``--decoder_depth`` blocks of width ``--decoder_dim``) with fixed
2-D sine-cosine position embeddings, as in the paper.

Shapes: images ``float32 (N, C, H, W)``, ``H = W = side``, ``side`` a multiple of the patch ``p``;
``L = (side / p) ** 2`` patches of ``p * p * C`` values each, flattened in (row, column, channel) order.
"""

import math

import torch
from torch import nn


def patchify(images, p):
    """``(N, C, H, W)`` -> ``(N, L, p * p * C)``: the patches in raster order, each (row, column, channel)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches, p, channels):
    """Inverse of :func:`patchify` for square images: ``(N, L, p * p * C)`` -> ``(N, C, H, W)``."""
    n, length, _ = patches.shape
    side = int(math.isqrt(length))
    x = patches.reshape(n, side, side, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, channels, side * p, side * p)


def sincos_pos_embed(dim, grid, cls_token=True):
    """Fixed 2-D sine-cosine position embeddings (MAE; Vaswani et al. 2017 per axis): ``(1, [1 +] grid**2, dim)``.

    Half the channels encode the row, half the column; ``dim`` must be a multiple of 4. The class
    token's row is zeros.
    """
    if dim % 4:
        raise ValueError(f"decoder_dim={dim} must be a multiple of 4 for 2-D sine-cosine embeddings")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    parts = [f(pos.reshape(-1, 1) * omega) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1).float()
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table])
    return table.unsqueeze(0)


def random_masking(length, keep, batch, device, generator=None):
    """Per-image random choice of ``keep`` of ``length`` patches (MAE's shuffle-and-keep).

    Returns ``(ids_keep, ids_restore, mask)``: ``int64 (N, keep)`` indices of the kept patches,
    ``int64 (N, length)`` the permutation that puts the shuffled sequence back in order, and
    ``float32 (N, length)`` with 1 for masked (hidden) patches, 0 for kept ones. Uses the global RNG
    (or ``generator``): the loop seeds it per step, so resumed runs draw the same masks.
    """
    noise = torch.rand(batch, length, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, length, device=device)
    mask[:, :keep] = 0
    return ids_keep, ids_restore, torch.gather(mask, 1, ids_restore)


class MAE(nn.Module):
    """ViT encoder on the visible patches plus a light decoder that predicts the pixels of all of them.

    Args:
        vit: a torchvision ``VisionTransformer`` (its head is dropped; its other modules are kept by name).
        in_chans: image channels ``C``.
        mask_ratio: share of patches hidden per image; ``round(L * (1 - mask_ratio))`` are kept (at least 1).
        decoder_dim, decoder_depth, decoder_heads: the decoder's width, blocks and attention heads.
        norm_pix_loss: targets normalised per patch (mean 0, variance 1 over its pixels), as in the paper.

    ``forward(images)`` returns ``(pred, mask)``: ``float32 (N, L, p*p*C)`` predicted patches and the
    ``(N, L)`` mask (1 = hidden). :meth:`loss` scores them; :meth:`features` embeds images without masking.
    """

    def __init__(
        self, vit, in_chans, mask_ratio=0.75, decoder_dim=128, decoder_depth=2, decoder_heads=4, norm_pix_loss=True
    ):
        super().__init__()
        from torchvision.models.vision_transformer import EncoderBlock

        self.conv_proj, self.class_token, self.encoder = vit.conv_proj, vit.class_token, vit.encoder
        self.patch_size, self.hidden_dim, self.in_chans = vit.patch_size, vit.hidden_dim, in_chans
        self.grid = vit.image_size // vit.patch_size
        self.num_patches = self.grid**2
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.keep = max(1, round(self.num_patches * (1 - mask_ratio)))
        self.decoder = nn.Module()
        self.decoder.embed = nn.Linear(self.hidden_dim, decoder_dim)
        self.decoder.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder.register_buffer("pos_embedding", sincos_pos_embed(decoder_dim, self.grid), persistent=False)
        self.decoder.layers = nn.Sequential(
            *[EncoderBlock(decoder_heads, decoder_dim, 4 * decoder_dim, 0.0, 0.0) for _ in range(decoder_depth)]
        )
        self.decoder.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder.pred = nn.Linear(decoder_dim, self.patch_size**2 * in_chans)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    def _tokens(self, images):
        """Patch embeddings with their position embeddings: ``(N, L, D)``."""
        x = self.conv_proj(images).flatten(2).transpose(1, 2)
        return x + self.encoder.pos_embedding[:, 1:]

    def _encode(self, x):
        cls = (self.class_token + self.encoder.pos_embedding[:, :1]).expand(x.shape[0], -1, -1)
        return self.encoder.ln(self.encoder.layers(self.encoder.dropout(torch.cat([cls, x], dim=1))))

    def forward(self, images):
        x = self._tokens(images)
        n, length, dim = x.shape
        ids_keep, ids_restore, mask = random_masking(length, self.keep, n, x.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        latent = self._encode(x)  # (N, 1 + keep, D): the encoder sees the visible patches only
        d = self.decoder
        y = d.embed(latent)
        filler = d.mask_token.expand(n, length - self.keep, -1).to(y.dtype)
        patches = torch.cat([y[:, 1:], filler], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], patches], dim=1) + d.pos_embedding.to(y.dtype)
        y = d.pred(d.norm(d.layers(y)))
        return y[:, 1:].float(), mask

    def targets(self, images):
        """The pixels to predict: :func:`patchify` of ``images``, normalised per patch with ``norm_pix_loss``."""
        target = patchify(images.float(), self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def loss(self, images, pred, mask):
        """Mean squared error per pixel, averaged over the hidden patches only (visible ones count 0)."""
        per_patch = ((pred - self.targets(images)) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def reconstruct(self, images, pred, mask):
        """Images for display: ``(masked input, reconstruction with visible patches pasted back)``, both
        ``(N, C, H, W)``; with ``norm_pix_loss`` each predicted patch gets its true patch's mean and spread."""
        true = patchify(images.float(), self.patch_size)
        if self.norm_pix_loss:
            mean, var = true.mean(dim=-1, keepdim=True), true.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        hidden = mask.unsqueeze(-1)
        masked = unpatchify(true * (1 - hidden), self.patch_size, self.in_chans)
        pasted = unpatchify(true * (1 - hidden) + pred * hidden, self.patch_size, self.in_chans)
        return masked, pasted

    @torch.no_grad()
    def features(self, images):
        """Embeddings of whole images (no masking): the mean of the encoder's patch outputs, ``(N, D)``."""
        return self._encode(self._tokens(images))[:, 1:].mean(dim=1)

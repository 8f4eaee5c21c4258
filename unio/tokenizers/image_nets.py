"""The networks of the VQ image tokenizer (:mod:`unio.tokenizers.image`): the convolutional
encoder and decoder, their residual block, and the quantizer a config asks for.

Every module here takes the tokenizer's :class:`~unio.tokenizers.image.ImageTokenizerConfig`
(read only for its fields) and keeps the attribute names of the weights the shipped tokenizers
store (``encoder.conv_in.weight``, ``decoder.blocks.3.norm1.bias``, ...).
"""
from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import nn

__all__ = ["ResBlock", "Encoder", "Decoder", "build_quantizer"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip (the VQGAN / DDPM block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _groups(c: int) -> int:
    return math.gcd(c, 16)


class Encoder(nn.Module):
    """Pixels (B, 3, H, W) in [-1, 1] -> latents (B, latent_dim, H/f, W/f): pixel-unshuffle stem,
    residual blocks per resolution, stride-2 convs between them."""

    def __init__(self, cfg, latent_dim: int):
        super().__init__()
        ch = cfg.channels
        self.stem = cfg.stem
        self.conv_in = nn.Conv2d(3 * cfg.stem ** 2, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, c in enumerate(ch):
            cin = ch[i - 1] if i else ch[0]
            if i:  # stride-2 conv between resolutions
                blocks.append(nn.Conv2d(cin, c, 4, stride=2, padding=1))
                cin = c
            blocks += [ResBlock(cin if j == 0 else c, c) for j in range(cfg.res_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(_groups(ch[-1]), ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], latent_dim, 1)

    def forward(self, x):                                   # (B, 3, H, W) in [-1, 1]
        x = F.pixel_unshuffle(x, self.stem) if self.stem > 1 else x  # (B, 3 s^2, H/s, W/s)
        h = self.blocks(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))      # (B, D, h, w)


class Decoder(nn.Module):
    """Latents (B, latent_dim, h, w) -> pixels (B, 3, H, W) ~[-1, 1], the encoder mirrored with one
    more residual block per resolution and nearest upsampling."""

    def __init__(self, cfg, latent_dim: int):
        super().__init__()
        ch = tuple(reversed(cfg.channels))
        self.stem = cfg.stem
        self.conv_in = nn.Conv2d(latent_dim, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, c in enumerate(ch):
            if i:  # nearest upsample + conv (no checkerboard artefacts, Odena et al., 2016)
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i - 1], c, 3, padding=1)]
            blocks += [ResBlock(c, c) for _ in range(cfg.res_blocks + 1)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(_groups(ch[-1]), ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 3 * cfg.stem ** 2, 3, padding=1)

    def forward(self, z):                                   # (B, D, h, w)
        x = self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(z)))))
        return F.pixel_shuffle(x, self.stem) if self.stem > 1 else x  # (B, 3, H, W) ~[-1, 1]


def build_quantizer(cfg) -> tuple[nn.Module, int, int]:
    """-> (quantizer, latent dim the encoder must produce, codebook size).

    vector-quantize-pytorch is imported here, not at the top: it loads torch._dynamo (through
    einx), about 1.5 s, which ``import unio.export`` and ``import unio.pipeline`` need not pay.
    """
    import vector_quantize_pytorch as vqp

    if cfg.quantizer == "fsq":
        q = vqp.FSQ(levels=list(cfg.levels))
        return q, len(cfg.levels), int(np.prod(cfg.levels))
    if cfg.quantizer == "vq":
        dim = max(cfg.codebook_dim, 1)
        q = vqp.VectorQuantize(
            dim=dim, codebook_size=cfg.codebook_size, decay=cfg.decay, kmeans_init=cfg.kmeans_init,
            kmeans_iters=10, use_cosine_sim=cfg.use_cosine_sim, threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            commitment_weight=cfg.commitment_weight, accept_image_fmap=True)
        return q, dim, cfg.codebook_size
    bits = int(math.log2(cfg.codebook_size))
    q = vqp.LFQ(dim=bits, codebook_size=cfg.codebook_size, entropy_loss_weight=cfg.entropy_loss_weight,
                commitment_loss_weight=0.25)
    return q, bits, cfg.codebook_size

"""Depth maps and binary masks drawn as RGB images, so they travel as VQ codes like any image.

Unified-IO (Lu et al., 2022) writes depth and segmentation masks with the same image tokenizer
as pictures; unio does the same with :class:`~unio.tokenizers.image.ImageTokenizer`.

Encodings (chosen to survive vector quantisation):

- **depth** is a grey level replicated on the three channels: ``(depth - min_depth) /
  (max_depth - min_depth)``, clipped to [0, 1], so near is dark and far is bright. Three equal
  channels let the tokenizer spend its capacity on one smooth quantity, and the inverse averages
  them, which cancels part of the reconstruction noise. The stated ranges: the shapes world uses
  depth in [0, 1] (``max_depth=1``); real data uses metres in [0, 10] (``max_depth=10``, NYUv2's
  range). The range a tokenizer was trained with is recorded in its config (``depth_range``).
  Float images round-trip exactly (to float32 rounding); through 8-bit images (PIL, uint8) the
  depth error is at most ``(max_depth - min_depth) / 510`` (half a grey level).
- **masks** are white (1, 1, 1) on black (0, 0, 0): the largest contrast on every channel, so a
  reconstruction is read back with a threshold at 0.5 of the channel mean and is robust to the
  blur a VQ decoder leaves on edges. The round trip is exact.

Arrays keep their kind: numpy in -> numpy out, torch in -> torch out (PIL images in -> numpy).
Shapes: depth/mask (H, W) or (B, H, W) <-> images (3, H, W) or (B, 3, H, W), channels first like
the tokenizer's input.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError

__all__ = ["depth_to_image", "image_to_depth", "mask_to_image", "image_to_mask",
           "SHAPES_DEPTH_RANGE", "METRIC_DEPTH_RANGE"]

SHAPES_DEPTH_RANGE = (0.0, 1.0)     # the shapes world's per-pixel depth
METRIC_DEPTH_RANGE = (0.0, 10.0)    # real data, metres (indoor scenes, NYUv2)


def depth_to_image(depth, max_depth: float = 1.0, min_depth: float = 0.0):
    """Depth (H, W) or (B, H, W) -> grey image (3, H, W) or (B, 3, H, W) float32 in [0, 1].

    Depths outside [min_depth, max_depth] are clipped; NaN / infinite depths are refused (fill
    missing depth first, e.g. with ``max_depth``).
    """
    lo, hi = _range(min_depth, max_depth)
    d, is_torch = _as_numpy(depth, "depth")
    if d.ndim not in (2, 3) or 0 in d.shape:
        raise ImageError(f"depth must be (H, W) or (B, H, W), got shape {d.shape}")
    d = d.astype(np.float64)
    if not np.isfinite(d).all():
        raise ImageError("depth contains NaN or infinite values; fill missing depth (e.g. with max_depth) first")
    grey = np.clip((d - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    img = np.repeat(grey[..., None, :, :], 3, axis=-3)     # (..., 3, H, W)
    return torch.from_numpy(img) if is_torch else img


def image_to_depth(image, max_depth: float = 1.0, min_depth: float = 0.0):
    """Image (3, H, W) / (B, 3, H, W) float in [0, 1] (or uint8, or PIL) -> depth float32 (H, W) / (B, H, W)."""
    lo, hi = _range(min_depth, max_depth)
    img, is_torch = _image_array(image)
    depth = (img.mean(axis=-3, dtype=np.float64) * (hi - lo) + lo).astype(np.float32)
    return torch.from_numpy(depth) if is_torch else depth


def mask_to_image(mask):
    """Binary mask (H, W) or (B, H, W) (bool, or 0/1 numbers) -> image (3, H, W) / (B, 3, H, W) float32."""
    m, is_torch = _as_numpy(mask, "mask")
    if m.ndim not in (2, 3) or 0 in m.shape:
        raise ImageError(f"mask must be (H, W) or (B, H, W), got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ImageError("mask must be boolean or hold only 0 and 1; threshold soft masks first (mask > 0.5)")
        m = m.astype(bool)
    img = np.repeat(m[..., None, :, :], 3, axis=-3).astype(np.float32)
    return torch.from_numpy(img) if is_torch else img


def image_to_mask(image, threshold: float = 0.5):
    """Image (3, H, W) / (B, 3, H, W) in [0, 1] (or uint8, or PIL) -> bool mask (H, W) / (B, H, W)."""
    img, is_torch = _image_array(image)
    mask = img.mean(axis=-3) > threshold
    return torch.from_numpy(mask) if is_torch else mask


# ---------------------------------------------------------------- helpers


def _range(lo, hi) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ImageError(f"depth range must satisfy min_depth < max_depth, got [{lo}, {hi}]; "
                         "use max_depth=1 for the shapes world, 10 (metres) for real data")
    return lo, hi


def _as_numpy(x, what: str) -> tuple[np.ndarray, bool]:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy(), True
    if isinstance(x, np.ndarray):
        return x, False
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x), False
        except ValueError:
            pass
    raise ImageError(f"{what} must be a numpy array or torch tensor, not a {type(x).__name__}")


def _image_array(image) -> tuple[np.ndarray, bool]:
    """-> float array (..., 3, H, W) in [0, 1] and whether the input was a tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0, False
    img, is_torch = _as_numpy(image, "image")
    if img.ndim not in (3, 4) or img.shape[-3] != 3:
        raise ImageError(f"expected an image (3, H, W) or (B, 3, H, W), channels first, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0, is_torch
    if img.dtype.kind != "f":
        raise ImageError(f"image must be float in [0, 1] or uint8, got dtype {img.dtype}")
    return np.clip(img, 0.0, 1.0), is_torch

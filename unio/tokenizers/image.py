"""The VQ image tokenizer: a small convolutional autoencoder with a discrete bottleneck.

Images (and depth maps / masks drawn as images by :mod:`unio.tokenizers.dense`) become a grid of
integer codes that the decoder of a unified seq2seq model can read and write, as in Unified-IO
(Lu et al., 2022) and OFA (Wang et al., 2022), whose VQ-GANs (Esser et al., 2021) are downloads;
this one is trained from scratch (``unio tokenizer image``, see :mod:`unio.training.image_tokenizer`).

The quantizer comes from vector-quantize-pytorch and is chosen by the config:

- ``fsq``: Finite Scalar Quantization (Mentzer et al., 2023). No codebook to collapse, no
  auxiliary loss; the codebook size is the product of ``levels``. The default.
- ``vq``: ``VectorQuantize`` (van den Oord et al., 2017) with EMA codebook updates, k-means
  initialisation, dead-code replacement and optional low-dimensional / cosine codebooks
  (Yu et al., 2021, ViT-VQGAN).
- ``lfq``: lookup-free quantization (Yu et al., 2023, MAGVIT-v2), ``codebook_size`` a power of 2.

Storage is ``config.json`` + ``model.safetensors`` (nothing is unpickled on load). The encoder,
decoder and quantizer networks are in :mod:`.image_nets`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ImageError, TokenizerError
from ..images import load_image
from ..resources import data_path, default_file_mode
from .dense import depth_to_image, image_to_depth, image_to_mask, mask_to_image
from .image_nets import Decoder, Encoder, build_quantizer
from .refine import REFINABLE, GuidedRefiner, RefinerConfig

__all__ = ["ImageTokenizerConfig", "ImageTokenizer"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "unio-image-tokenizer"


@dataclass
class ImageTokenizerConfig:
    image_size: int = 64             # the size it is trained for (any multiple of downsample works)
    downsample: int = 8              # image side / code-grid side: 8 or 16
    stem: int = 2                    # pixel-unshuffle factor before the first conv: most compute is
                                     # spent at lower resolution, edges come back via pixel-shuffle
    channels: tuple[int, ...] = (64, 128, 192)  # width at each resolution, from stem output down to the grid
    res_blocks: int = 1              # residual blocks per resolution (encoder; the decoder gets one more)
    quantizer: str = "fsq"           # fsq | vq | lfq
    levels: tuple[int, ...] = (8, 8, 6, 5)   # fsq: levels per latent dim (codebook = product)
    codebook_size: int = 1024        # vq / lfq (lfq: a power of 2); fsq: set to the product of levels
    codebook_dim: int = 8            # vq: low-dimensional codebook (ViT-VQGAN); lfq ignores it
    use_cosine_sim: bool = True      # vq: l2-normalised codes (ViT-VQGAN)
    kmeans_init: bool = True         # vq: initialise the codebook by k-means on the first batch
    threshold_ema_dead_code: float = 2.0  # vq: re-seed codes whose EMA usage drops below this
    decay: float = 0.9               # vq: EMA decay of the codebook
    commitment_weight: float = 0.25  # vq: commitment loss weight
    entropy_loss_weight: float = 0.1  # lfq: entropy regulariser
    depth_range: tuple[float, float] = (0.0, 1.0)  # depth (as drawn by dense.py) this tokenizer was trained on
    weights_dtype: str = "float32"   # dtype of model.safetensors (float16 halves the file)
    refiners: dict = field(default_factory=dict)  # image-guided refiners of decoded maps, by kind
                                     # ("depth", "mask"): {kind: RefinerConfig fields}, see refine.py
    training: dict = field(default_factory=dict)  # how it was made: command, steps, measured quality

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.levels = tuple(int(v) for v in self.levels)
        self.depth_range = tuple(float(v) for v in self.depth_range)
        if self.downsample not in (8, 16):
            raise TokenizerError(f"downsample must be 8 or 16, got {self.downsample}")
        if self.stem not in (1, 2, 4) or self.downsample % self.stem:
            raise TokenizerError(f"stem must be 1, 2 or 4 and divide downsample, got {self.stem}")
        if len(self.channels) != int(math.log2(self.downsample // self.stem)) + 1:
            raise TokenizerError(
                f"channels needs one width per resolution: log2(downsample / stem) + 1 = "
                f"{int(math.log2(self.downsample // self.stem)) + 1} entries, got {len(self.channels)}")
        if self.quantizer not in ("fsq", "vq", "lfq"):
            raise TokenizerError(f"unknown quantizer {self.quantizer!r}; use fsq, vq or lfq")
        if self.quantizer == "fsq":
            if min(self.levels, default=0) < 3:
                raise TokenizerError(f"fsq levels must each be >= 3 (e.g. 8,8,6,5), got {list(self.levels)}")
            self.codebook_size = int(np.prod(self.levels))
        if self.quantizer == "lfq" and (self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1)):
            raise TokenizerError(f"lfq needs a power-of-2 codebook_size, got {self.codebook_size}")
        if self.image_size % self.downsample:
            raise TokenizerError(f"image_size {self.image_size} is not a multiple of downsample {self.downsample}")
        if self.weights_dtype not in ("float32", "float16"):
            raise TokenizerError(f"weights_dtype must be float32 or float16, got {self.weights_dtype!r}")
        if not isinstance(self.refiners, dict):
            raise TokenizerError(f"refiners must be a mapping {{kind: settings}}, got {self.refiners!r}")
        bad = sorted(set(self.refiners) - set(REFINABLE))
        if bad:
            raise TokenizerError(f"refiners can serve {', '.join(REFINABLE)}, not {bad}")
        self.refiners = {k: RefinerConfig.from_dict(v, k).to_dict() for k, v in sorted(self.refiners.items())}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("channels", "levels", "depth_range"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageTokenizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"format"})
        if unknown:
            raise TokenizerError(f"image tokenizer config has unknown keys {unknown}; was it written by a newer unio?")
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------- the tokenizer


class ImageTokenizer(nn.Module):
    """Images (B, 3, H, W) in [0, 1] <-> codes (B, H/f, W/f) in [0, codebook_size).

    >>> tok = ImageTokenizer.load("tokenizers/shapes/image")
    >>> codes = tok.encode(images)          # LongTensor (B, 8, 8) for 64 x 64 images
    >>> recon = tok.decode(codes)           # float (B, 3, 64, 64) in [0, 1]
    """

    def __init__(self, config: ImageTokenizerConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = ImageTokenizerConfig(**overrides)
        elif overrides:
            config = ImageTokenizerConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.quantizer, self.latent_dim, self._codebook_size = build_quantizer(config)
        self.encoder = Encoder(config, self.latent_dim)
        self.decoder = Decoder(config, self.latent_dim)
        self.refiners = nn.ModuleDict({kind: GuidedRefiner(RefinerConfig.from_dict(spec, kind))
                                       for kind, spec in config.refiners.items()})

    # -- properties the rest of unio reads

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid_size(self) -> int:
        """Side of the code grid at ``image_size``."""
        return self.config.image_size // self.config.downsample

    @property
    def tokens_per_image(self) -> int:
        return self.grid_size ** 2

    @property
    def depth_range(self) -> tuple[float, float]:
        return self.config.depth_range

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fingerprint(self) -> str:
        """sha256 of the config and the weights as stored (in ``weights_dtype``).

        Recomputed on each call (a few ms), so it always describes the current weights.
        """
        return self._hash(skip_config=("training",))

    @property
    def codes_fingerprint(self) -> str:
        """sha256 of what decides the codes: the config (less ``training`` and ``weights_dtype``)
        and the encoder and quantizer weights as stored.

        Two tokenizers with the same ``codes_fingerprint`` turn every image into the same codes and
        read codes with the same grid; only their decoders and refiners may differ (e.g. one was
        fine-tuned with ``unio tokenizer image --init DIR --decoder-only`` or ``--refine depth``). A
        model trained on one can use the other's decoder: ``unio tokenizer swap-image``.
        """
        return self._hash(skip_config=("training", "weights_dtype", "refiners"),
                          skip_weights=("decoder.", "refiners."), as_float32=True)

    def _hash(self, skip_config: tuple[str, ...], skip_weights: tuple[str, ...] = (), as_float32: bool = False) -> str:
        """sha256 of the config less ``skip_config`` and the stored weights less those under ``skip_weights``
        (``as_float32``: floating-point weights read as float32, so the storage dtype does not count).

        A tokenizer without refiners hashes as it did before refiners existed.
        """
        h = hashlib.sha256()
        cfg = {k: v for k, v in self.config.to_dict().items()
               if k not in skip_config and not (k == "refiners" and not v)}
        h.update(json.dumps(cfg, sort_keys=True).encode())
        for name, t in sorted(self._storage_state_dict().items()):
            if name.startswith(skip_weights):
                continue
            if as_float32 and t.is_floating_point():
                t = t.float()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def _storage_state_dict(self) -> dict[str, torch.Tensor]:
        dtype = getattr(torch, self.config.weights_dtype)
        return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
                for k, v in self.state_dict().items()}

    # -- refiners

    def has_refiner(self, kind: str) -> bool:
        """Whether decoded ``kind`` maps ("depth", "mask") can be refined with the picture as a guide."""
        return kind in self.refiners

    def add_refiner(self, kind: str, config: RefinerConfig | None = None) -> GuidedRefiner:
        """A new (untrained) image-guided refiner for ``kind``; it changes neither codes nor decoder."""
        if kind not in REFINABLE:
            raise TokenizerError(f"refiners can serve {', '.join(REFINABLE)}, not {kind!r}")
        if kind in self.refiners:
            raise TokenizerError(f"this tokenizer already has a {kind} refiner")
        config = config or RefinerConfig()
        self.refiners[kind] = GuidedRefiner(config).to(self.device)
        self.config.refiners = dict(sorted({**self.config.refiners, kind: config.to_dict()}.items()))
        return self.refiners[kind]

    # -- the network, differentiable (used by training)

    def forward(self, images: torch.Tensor):
        """(B, 3, H, W) in [0, 1] -> (reconstruction in [-1, 1] space, codes (B, h, w), aux loss)."""
        z = self.encoder(images * 2 - 1)
        zq, codes, aux = self._quantize(z)
        return self.decoder(zq), codes, aux

    def _quantize(self, z):
        if self.config.quantizer == "fsq":
            zq, codes = self.quantizer(z)
            return zq, codes.long(), z.new_zeros(())
        if self.config.quantizer == "vq":
            zq, codes, loss = self.quantizer(z)
            return zq, codes.long(), loss.sum()
        zq, codes, loss = self.quantizer(z)
        return zq, codes.long(), loss

    def _codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        if self.config.quantizer == "fsq":
            return self.quantizer.indices_to_codes(codes)          # (B, D, h, w)
        if self.config.quantizer == "vq":
            return self.quantizer.get_output_from_indices(codes)   # (B, D, h, w) with accept_image_fmap
        return self.quantizer.indices_to_codes(codes)

    @contextlib.contextmanager
    def _eval_mode(self):
        """Eval mode (EMA codebooks frozen) for the duration, then the mode the caller had."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # -- the public API

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Float tensor (B, 3, H, W) in [0, 1] (or a list of PIL images) -> LongTensor (B, H/f, W/f)."""
        x = self._check_images(images)
        with self._eval_mode():
            _, codes, _ = self._quantize(self.encoder(x * 2 - 1))
        return codes

    @torch.no_grad()
    def decode(self, codes) -> torch.Tensor:
        """Codes (B, h, w), or (B, h*w) for the square grid of ``image_size`` -> float (B, 3, H, W) in [0, 1]."""
        codes = self._check_codes(codes)
        with self._eval_mode():
            out = self.decoder(self._codes_to_latent(codes))
        return ((out + 1) / 2).clamp_(0, 1)

    def reconstruct(self, images) -> torch.Tensor:
        """decode(encode(images))."""
        return self.decode(self.encode(images))

    def encode_depth(self, depth) -> torch.Tensor:
        """Depth maps (B, H, W) in ``depth_range`` units -> codes (B, h, w)."""
        lo, hi = self.depth_range
        return self.encode(torch.as_tensor(depth_to_image(_as_batch(depth), hi, min_depth=lo)))

    def decode_depth(self, codes, guide=None) -> np.ndarray:
        """Codes -> depth maps float32 (B, H, W) in ``depth_range`` units.

        ``guide``: the pictures the maps belong to (as :meth:`encode` takes them, any size that is
        a multiple of the downsampling factor); with a depth refiner (:meth:`has_refiner`) the
        decoded edges are moved onto the picture's. Without one the guide is not used.
        """
        lo, hi = self.depth_range
        return image_to_depth(self._decode_map(codes, "depth", guide).cpu().numpy(), hi, min_depth=lo)

    def encode_mask(self, mask) -> torch.Tensor:
        """Binary masks (B, H, W) -> codes (B, h, w)."""
        return self.encode(torch.as_tensor(mask_to_image(_as_batch(mask))))

    def decode_mask(self, codes, guide=None) -> np.ndarray:
        """Codes -> bool masks (B, H, W); ``guide`` as for :meth:`decode_depth`."""
        return image_to_mask(self._decode_map(codes, "mask", guide).cpu().numpy())

    @torch.no_grad()
    def refine(self, kind: str, values: torch.Tensor, guide) -> torch.Tensor:
        """Decoded maps (B, 1, H, W) in [0, 1] (drawn as by :mod:`.dense`) -> refined maps, same shape."""
        if kind not in self.refiners:
            raise TokenizerError(f"this tokenizer has no {kind} refiner (it has: "
                                 f"{', '.join(self.refiners) or 'none'}); train one with "
                                 f"unio tokenizer image --init DIR --refine {kind}")
        g = self._check_guide(guide, values)
        with self._eval_mode():
            return self.refiners[kind](values.to(self.device, torch.float32), g).clamp_(0, 1)

    def _decode_map(self, codes, kind: str, guide) -> torch.Tensor:
        """decode(codes), refined as one grey channel when there is a guide and a refiner for ``kind``."""
        images = self.decode(codes)
        if guide is None or kind not in self.refiners:
            return images
        return self.refine(kind, images.mean(1, keepdim=True), guide).expand(-1, 3, -1, -1)

    def _check_guide(self, guide, values: torch.Tensor) -> torch.Tensor:
        """The guide pictures as float (B, 3, H, W) in [0, 1] at the maps' size."""
        try:
            g = self._check_images(guide)
        except ImageError as exc:
            raise ImageError(f"guide: {exc}") from None
        if g.shape[0] != values.shape[0]:
            raise ImageError(f"{values.shape[0]} maps but {g.shape[0]} guide pictures; pass one picture per map")
        if g.shape[-2:] != values.shape[-2:]:
            g = F.interpolate(g, size=tuple(values.shape[-2:]), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 1)
        return g

    def codebook_usage(self, codes) -> dict[str, float]:
        """Fraction of the codebook used by ``codes`` and the perplexity of their distribution."""
        codes = self._check_codes(codes, grid=False)
        counts = torch.bincount(codes.flatten().cpu(), minlength=self.codebook_size).double()
        p = counts[counts > 0] / counts.sum()
        return {"usage": float((counts > 0).sum()) / self.codebook_size,
                "perplexity": float(torch.exp(-(p * p.log()).sum())),
                "codes_seen": int(counts.sum())}

    # -- input checks

    def _check_images(self, images) -> torch.Tensor:
        if isinstance(images, (list, tuple)):
            if not images:
                raise ImageError("encode() got an empty list; pass at least one image")
            arrays = []
            for i, im in enumerate(images):
                if isinstance(im, torch.Tensor) and im.ndim == 3:
                    arrays.append(im.float())
                    continue
                try:
                    pil = load_image(im)
                except ImageError as exc:
                    raise ImageError(f"image {i} of the list: {exc}") from None
                arrays.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1))
            if len({tuple(a.shape) for a in arrays}) > 1:
                raise ImageError(f"images of a batch must share one size, got {sorted({tuple(a.shape) for a in arrays})}; "
                                 "letterbox them first (unio.images.letterbox)")
            images = torch.stack(arrays)
        if not isinstance(images, torch.Tensor):
            raise ImageError(f"encode() takes a float tensor (B, 3, H, W) in [0, 1] or a list of PIL images, "
                             f"not a {type(images).__name__}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ImageError(f"expected images of shape (B, 3, H, W) (RGB, channels first), got {tuple(images.shape)}; "
                             "convert grey or RGBA images to RGB and move channels first")
        if not images.is_floating_point():
            if images.dtype == torch.uint8:
                images = images.float() / 255.0
            else:
                raise ImageError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
        h, w = images.shape[-2:]
        f = self.downsample
        if h == 0 or w == 0 or h % f or w % f:
            raise ImageError(f"image size {h}x{w} is not a multiple of the downsampling factor {f}; "
                             f"resize or letterbox to {self.image_size}x{self.image_size}")
        if not torch.isfinite(images).all():
            raise ImageError("images contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ImageError(f"image values must be in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
                             "divide uint8 pixels by 255 (and do not pass [-1, 1] model pixel values)")
        return images.to(self.device, torch.float32).clamp(0, 1)

    def _check_codes(self, codes, grid: bool = True) -> torch.Tensor:
        if isinstance(codes, np.ndarray):
            codes = torch.from_numpy(codes)
        if not isinstance(codes, torch.Tensor):
            raise TokenizerError(f"codes must be an integer tensor (B, h, w), not a {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TokenizerError(f"codes must be integers (torch.long), got dtype {codes.dtype}")
        if codes.numel() == 0:
            raise TokenizerError("codes are empty")
        if grid:
            n = self.tokens_per_image
            if codes.ndim == 2 and codes.shape[1] == n:
                codes = codes.reshape(-1, self.grid_size, self.grid_size)
            elif codes.ndim != 3:
                raise TokenizerError(f"codes must have shape (B, h, w), or (B, {n}) for {self.image_size}px images; "
                                     f"got {tuple(codes.shape)}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise TokenizerError(f"codes must be in [0, {self.codebook_size}), got values in [{lo}, {hi}]; "
                                 "map global vocabulary ids back with UnifiedVocab.to_local(ids, 'image')")
        return codes.long().to(self.device)

    # -- files

    def save(self, directory) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, **self.config.to_dict()}
        (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(self._storage_state_dict(), str(d / WEIGHTS_NAME), metadata={"format": FORMAT})
        default_file_mode(d / WEIGHTS_NAME)
        return d

    @classmethod
    def load(cls, directory, device=None) -> "ImageTokenizer":
        """Read a folder written by :meth:`save`. ``"shapes"`` names the tokenizer shipped with unio."""
        d = Path(directory)
        if str(directory) == "shapes" and not d.exists():
            d = data_path("tokenizers", "shapes", "image")
        if not d.is_dir():
            raise TokenizerError(f"image tokenizer folder {d} does not exist; pass the folder holding "
                                 f"{CONFIG_NAME} and {WEIGHTS_NAME} (e.g. tokenizers/shapes/image)")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise TokenizerError(f"image tokenizer folder {d} has no {name}; it must hold {CONFIG_NAME} and "
                                     f"{WEIGHTS_NAME} as written by ImageTokenizer.save")
        try:
            meta = json.loads((d / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{d / CONFIG_NAME} is not valid JSON ({exc}); the folder is corrupt, re-save it") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TokenizerError(f"{d / CONFIG_NAME} is not an image tokenizer config (format != {FORMAT!r})")
        try:
            config = ImageTokenizerConfig.from_dict(meta)
        except TypeError as exc:
            raise TokenizerError(f"{d / CONFIG_NAME} has a malformed value ({exc})") from None
        tok = cls(config)
        try:
            state = load_file(str(d / WEIGHTS_NAME))
        except (SafetensorError, OSError, ValueError) as exc:
            raise TokenizerError(f"could not read {d / WEIGHTS_NAME} ({exc}); the file is corrupt, re-save it") from None
        own = tok.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad = [k for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or bad:
            raise TokenizerError(f"{d / WEIGHTS_NAME} does not match {CONFIG_NAME}: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}, wrong shape {bad[:3]}; re-save the tokenizer")
        tok.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        tok.eval()
        return tok.to(device) if device is not None else tok

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        refiners = f", refiners={'+'.join(self.refiners)}" if len(self.refiners) else ""
        return (f"quantizer={self.config.quantizer}, codebook_size={self.codebook_size}, "
                f"downsample={self.downsample}, image_size={self.image_size}, params={n / 1e6:.2f}M{refiners}")


def _as_batch(x):
    x = x if isinstance(x, (np.ndarray, torch.Tensor)) else np.asarray(x)
    return x[None] if x.ndim == 2 else x

"""Training the VQ image tokenizer: ``unio tokenizer image --data shapes --out DIR``.

The data mixes RGB pictures with depth maps and object masks drawn as images by
:mod:`unio.tokenizers.dense`: a tokenizer trained on RGB alone reproduces binary masks badly
(IoU ~0.2 on the shapes world), because white-on-black silhouettes and grey ramps are far from
anything it has seen. Shapes samples are rendered on the fly (about 0.4 ms each), so every step
sees fresh scenes and there is nothing to overfit.

Loss: L1 + L2 on the reconstruction (plus the quantizer's own auxiliary loss for vq / lfq).
The learning rate warms up, then follows a cosine to zero at ``--steps``.

Fine-tuning: ``--init DIR`` starts from an existing tokenizer (its architecture and weights);
with ``--decoder-only`` the encoder and quantizer stay frozen, so every image keeps its codes and
a model trained on DIR can take the new decoder (``unio tokenizer swap-image``). With
``--refine depth`` (or ``mask``, or ``depth,mask``) only image-guided refiners of decoded maps
learn (:mod:`.refine`): each step encodes and decodes depth maps / masks with the frozen
tokenizer and trains the refiner to pull the decoded map towards the truth, guided by the scene's
picture (loss: relative depth error, AbsRel-like; binary cross-entropy for masks). The pairs come
from the shapes world (``--data shapes``) or from any dataset ``unio eval`` reads that has them
(``--data depth:images=DIR,depth=DIR``, a JSONL manifest, COCO instances for masks), whose last
samples are held out for the figures. The run checks
the codes' fingerprint at every checkpoint and records where it started in the config (with the
starting tokenizer's own training record).

Files: ``--out`` receives the tokenizer (``config.json`` + ``model.safetensors``, what
:meth:`ImageTokenizer.load` reads) at every evaluation and at the end. The resumable training
state (fp32 weights, optimizer, step, metrics.jsonl) lives in ``--run-dir`` (default
``OUT.run``), so the tokenizer folder stays free of pickles; ``--resume`` continues from it.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, ImageError, TokenizerError
from ..metrics import depth_metrics
from .dense import depth_to_image, mask_to_image
from .image import ImageTokenizer, ImageTokenizerConfig
from .refine import REFINABLE, RefinerConfig

__all__ = ["main", "ShapesSource", "FolderSource", "DatasetGuidedSource", "make_source", "train_step", "refine_step",
           "evaluate", "evaluate_guided", "psnr", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
KINDS = ("rgb", "depth", "mask")


# ---------------------------------------------------------------- data


def _mix_schedule(mix: dict[str, float], n: int = 16) -> list[str]:
    """A fixed cycle of kinds with the requested proportions (deterministic, no sampling noise)."""
    total = sum(mix.values())
    counts = {k: round(n * v / total) for k, v in mix.items()}
    return [k for k in KINDS for _ in range(counts.get(k, 0))] or ["rgb"]


class ShapesSource:
    """Seeded shapes scenes as tokenizer inputs: the picture, its depth map or one object's mask."""

    def __init__(self, image_size: int = 64, seed: int = 0, mix: dict[str, float] | None = None,
                 depth_range=(0.0, 1.0)):
        from ..data.shapes import ShapesWorld
        self.world = ShapesWorld(image_size=image_size, seed=seed)
        self.cycle = _mix_schedule(mix or {"rgb": 2, "depth": 1, "mask": 1})
        self.depth_range = depth_range

    def item(self, index: int) -> np.ndarray:
        """float32 (3, S, S) in [0, 1]."""
        kind = self.cycle[index % len(self.cycle)]
        s = self.world[index]
        if kind == "depth":
            return depth_to_image(s["depth"], self.depth_range[1], min_depth=self.depth_range[0])
        if kind == "mask":
            k = (index // len(self.cycle)) % len(s["objects"])
            return mask_to_image(s["objects"][k]["mask"])
        return np.asarray(s["image"], dtype=np.float32).transpose(2, 0, 1) / 255.0

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.item(int(i)) for i in indices]))

    def guided(self, indices) -> dict[str, torch.Tensor]:
        """Scenes for refiner training: ``rgb`` (B, 3, S, S) in [0, 1], ``depth`` (B, S, S) and one
        object's ``mask`` (B, S, S) per scene (the objects taken in turn)."""
        rgb, depth, mask = [], [], []
        for i in indices:
            s = self.world[int(i)]
            rgb.append(np.asarray(s["image"], dtype=np.float32).transpose(2, 0, 1) / 255.0)
            depth.append(s["depth"])
            mask.append(s["objects"][(int(i) // 7) % len(s["objects"])]["mask"])
        depth = torch.from_numpy(np.stack(depth).astype(np.float32))
        return {"rgb": torch.from_numpy(np.stack(rgb)), "depth": depth, "valid": depth > 0,
                "mask": torch.from_numpy(np.stack(mask)), "has_mask": torch.ones(len(rgb), dtype=torch.bool)}


class DatasetGuidedSource:
    """Pictures with their depth maps and object masks from any dataset reader (the data specs of
    ``unio eval``: ``depth:images=DIR,depth=DIR``, a JSONL manifest, ``coco:...``), letterboxed to
    the tokenizer's size as the depth and segment tasks do, for refiner training. The last
    ``held_out`` samples are kept apart for evaluation. Missing depth (NaN, <= 0) is drawn as far,
    as the depth task draws it, and left out of the loss and the figures."""

    def __init__(self, spec: str, image_size: int, depth_range, kinds: tuple[str, ...], held_out: int = 128):
        from ..data.specs import open_data
        self.source, _ = open_data(spec)
        n = len(self.source)
        if n < 2:
            raise DataError(f"--data {spec!r} has {n} sample(s); refiner training needs at least 2 (one held out)")
        self.held_out = max(1, min(int(held_out), n // 5))
        self.train_n = n - self.held_out
        self.size, self.depth_range, self.spec = int(image_size), tuple(depth_range), spec
        first = self.source[0]
        if "depth" in kinds and first.get("depth") is None:
            raise DataError(f"--data {spec!r} has no depth maps (its first sample has none); --refine depth needs "
                            "pictures with depth, e.g. depth:images=DIR,depth=DIR")
        if "mask" in kinds and not any(o.get("mask") is not None for o in first.get("objects") or []):
            raise DataError(f"--data {spec!r} has no object masks (its first sample has none); --refine mask needs "
                            "them, e.g. mask:images=DIR,masks=DIR or COCO instances")

    def guided(self, indices, held_out: bool = False) -> dict[str, torch.Tensor]:
        """As :meth:`ShapesSource.guided`, plus ``valid`` depth pixels and ``has_mask`` per scene."""
        from ..images import letterbox
        from ..tasks.dense import letterbox_array
        S, hi = self.size, self.depth_range[1]
        rgb, depth, valid, mask, has_mask = [], [], [], [], []
        for i in indices:
            i = int(i)
            index = self.train_n + i % self.held_out if held_out else i % self.train_n
            s = self.source[index]
            rgb.append(np.asarray(letterbox(s["image"], S)[0], dtype=np.float32).transpose(2, 0, 1) / 255.0)
            d = s.get("depth")
            if d is None:
                depth.append(np.full((S, S), hi, np.float32))
                valid.append(np.zeros((S, S), bool))
            else:
                d = np.asarray(d, dtype=np.float32)
                ok = np.isfinite(d) & (d > 0)
                depth.append(letterbox_array(np.where(ok, d, hi), S, hi, nearest=False))
                valid.append(letterbox_array(ok, S, False, nearest=True))
            objects = [o for o in s.get("objects") or [] if o.get("mask") is not None]
            has_mask.append(bool(objects))
            if objects:
                m = np.asarray(objects[(i // 7) % len(objects)]["mask"], dtype=bool)
                mask.append(letterbox_array(m, S, False, nearest=True))
            else:
                mask.append(np.zeros((S, S), bool))
        return {"rgb": torch.from_numpy(np.stack(rgb)), "depth": torch.from_numpy(np.stack(depth)),
                "valid": torch.from_numpy(np.stack(valid)), "mask": torch.from_numpy(np.stack(mask)),
                "has_mask": torch.tensor(has_mask)}


class FolderSource:
    """The user's images (recursively, common extensions), letterboxed to ``image_size``.

    The last 5% of the sorted file list (at least one, at most 256) is held out for evaluation.
    """

    def __init__(self, path, image_size: int = 64, held_out: bool = False):
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; pass --data folder:PATH with a folder of images")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "point --data folder:PATH at a folder with pictures")
        n_eval = min(256, max(1, len(files) // 20)) if len(files) > 1 else 0
        self.files = files[len(files) - n_eval:] if held_out else files[:len(files) - n_eval]
        if not self.files:  # a single image: train and evaluate on it
            self.files = files
        self.image_size = image_size
        self._cache: dict[int, np.ndarray] = {}
        self._cache_limit = max(1, (1 << 30) // (3 * image_size * image_size))  # ~1 GB of uint8

    def item(self, index: int) -> np.ndarray:
        from ..images import letterbox
        k = index % len(self.files)
        if k not in self._cache:
            try:
                square, _ = letterbox(self.files[k], self.image_size)
            except ImageError as exc:
                raise DataError(f"could not use {self.files[k]} for training: {exc}") from None
            arr = np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)
            if len(self._cache) >= self._cache_limit:
                return arr.astype(np.float32) / 255.0
            self._cache[k] = arr
        return self._cache[k].astype(np.float32) / 255.0

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.item(int(i)) for i in indices]))


def make_source(spec: str, image_size: int, seed: int = 0, held_out: bool = False, mix=None, depth_range=(0.0, 1.0)):
    """``shapes`` or ``folder:PATH`` -> a source with ``batch(indices)``; held_out picks the evaluation split."""
    if spec == "shapes":
        return ShapesSource(image_size, seed + 1 if held_out else seed, mix, depth_range)
    if spec.startswith("folder:") and len(spec) > len("folder:"):
        return FolderSource(spec[len("folder:"):], image_size, held_out=held_out)
    raise DataError(f"unknown --data {spec!r}; use 'shapes' or 'folder:PATH'")


# ---------------------------------------------------------------- optimisation


def lr_at(step: int, base: float, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1 + math.cos(math.pi * t))


def train_step(tok: ImageTokenizer, opt: torch.optim.Optimizer, x: torch.Tensor,
               decoder_only: bool = False) -> dict[str, float]:
    """One optimisation step on a batch (B, 3, H, W) in [0, 1]; returns the loss terms.

    ``decoder_only``: the encoder and quantizer run frozen (eval mode, no gradients), so the codes
    of every image stay what they were and only the decoder learns to read them better.
    """
    if decoder_only:
        tok.eval()
        tok.decoder.train()
        with torch.no_grad():
            zq, codes, aux = tok._quantize(tok.encoder(x * 2 - 1))
        recon = tok.decoder(zq)
    else:
        tok.train()
        recon, codes, aux = tok(x)
    target = x * 2 - 1
    l1 = (recon - target).abs().mean()
    l2 = (recon - target).pow(2).mean()
    loss = l1 + l2 + aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in tok.parameters() if p.requires_grad], 1.0)
    opt.step()
    return {"loss": loss.item(), "l1": l1.item(), "l2": l2.item(), "aux": float(aux.detach())}


def refine_step(tok: ImageTokenizer, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                kinds: tuple[str, ...]) -> dict[str, float]:
    """One step of the refiners named in ``kinds`` on a ``guided`` batch (:class:`ShapesSource`,
    :class:`DatasetGuidedSource`): ``rgb``, ``depth`` with its ``valid`` pixels, ``mask`` with
    ``has_mask`` per scene.

    The encoder, quantizer and decoder run frozen; each map is encoded and decoded as the model's
    codes would be, and its refiner learns to move the decoded map onto the truth with the
    picture as a guide.
    """
    tok.eval()
    device = tok.device
    rgb = batch["rgb"].to(device)
    lo, hi = tok.depth_range
    terms, loss = {}, 0.0
    if "depth" in kinds:
        truth = batch["depth"].to(device)
        grey = tok.decode(tok.encode(torch.as_tensor(depth_to_image(truth, hi, min_depth=lo)))).mean(1, keepdim=True)
        tok.refiners["depth"].train()
        pred = lo + tok.refiners["depth"](grey, rgb)[:, 0] * (hi - lo)
        valid = batch["valid"].to(device)
        rel = (pred - truth).abs() / truth.clamp_min(1e-3 * (hi - lo))
        terms["depth"] = rel[valid].mean() if valid.any() else rel.sum() * 0
        loss = loss + terms["depth"]
    if "mask" in kinds:
        truth = batch["mask"].to(device)
        grey = tok.decode(tok.encode(torch.as_tensor(mask_to_image(truth)))).mean(1, keepdim=True)
        tok.refiners["mask"].train()
        pred = tok.refiners["mask"](grey, rgb)[:, 0].clamp(1e-4, 1 - 1e-4)
        rows = batch["has_mask"].to(device)
        bce = torch.nn.functional.binary_cross_entropy(pred, truth.float(), reduction="none")
        terms["mask"] = bce[rows].mean() if rows.any() else bce.sum() * 0
        loss = loss + terms["mask"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in tok.parameters() if p.requires_grad], 1.0)
    opt.step()
    return {"loss": float(loss.detach()), **{f"loss_{k}": float(v.detach()) for k, v in terms.items()}}


# ---------------------------------------------------------------- evaluation


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


@torch.no_grad()
def evaluate(tok: ImageTokenizer, source="shapes", n: int = 500, seed: int = 1, batch_size: int = 50,
             dense: bool = True) -> dict[str, float]:
    """Reconstruction quality on ``n`` held-out images.

    For shapes (``source="shapes"``, ``seed`` not used in training) also the round trip of
    depth maps (AbsRel and RMSE on object pixels, averaged per image: the background dominates
    an all-pixel average) and of every object's mask (IoU, averaged over objects); for a kind
    with a refiner, the same figures with the scene's picture as the guide (``*_refined``).
    """
    image_size = tok.image_size
    if isinstance(source, str) and source == "shapes":
        from ..data.shapes import ShapesWorld
        world = ShapesWorld(image_size=image_size, seed=seed)
        samples = (world[i] for i in range(n))
    else:
        src = source if not isinstance(source, str) else make_source(source, image_size, held_out=True)
        count = min(n, len(src.files))
        samples = ({"image": src.item(i)} for i in range(count))
        dense = False
    lo, hi = tok.depth_range
    psnrs, rgb_codes, all_codes, absrel, rmse, ious = [], [], [], [], [], []
    refined: dict[str, list[float]] = {"depth_absrel": [], "depth_rmse": [], "mask_iou": []}

    def flush(batch):
        rgb = torch.from_numpy(np.stack([_rgb(s["image"]) for s in batch]))
        codes = tok.encode(rgb)
        psnrs.append(psnr(tok.decode(codes).cpu(), rgb))
        rgb_codes.append(codes.cpu())
        all_codes.append(codes.cpu())
        if not dense:
            return
        depth = np.stack([s["depth"] for s in batch])
        codes = tok.encode(torch.from_numpy(depth_to_image(depth, hi, min_depth=lo)))
        all_codes.append(codes.cpu())
        objects = [np.any([o["mask"] for o in s["objects"]], axis=0) for s in batch]

        def depth_errors(pred, into_absrel, into_rmse):
            for obj, p, d in zip(objects, pred, depth):
                m = depth_metrics(p, d, obj)
                into_absrel.append(m["absrel"])
                into_rmse.append(m["rmse"])

        depth_errors(tok.decode_depth(codes), absrel, rmse)
        if tok.has_refiner("depth"):
            depth_errors(tok.decode_depth(codes, guide=rgb), refined["depth_absrel"], refined["depth_rmse"])
        masks = np.stack([o["mask"] for s in batch for o in s["objects"]])
        owner = torch.tensor([j for j, s in enumerate(batch) for _ in s["objects"]])
        for i in range(0, len(masks), batch_size):
            m = masks[i:i + batch_size]
            codes = tok.encode(torch.from_numpy(mask_to_image(m)))
            all_codes.append(codes.cpu())
            ious.extend(_ious(tok.decode_mask(codes), m))
            if tok.has_refiner("mask"):
                refined["mask_iou"].extend(_ious(tok.decode_mask(codes, guide=rgb[owner[i:i + batch_size]]), m))

    batch = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    rgb_usage = tok.codebook_usage(torch.cat(rgb_codes))
    out = {"images": int(sum(len(p) for p in psnrs)), "psnr": float(torch.cat(psnrs).mean()),
           "usage": rgb_usage["usage"], "perplexity": rgb_usage["perplexity"]}
    if dense:
        every = tok.codebook_usage(torch.cat(all_codes))
        out.update({"depth_absrel": float(np.mean(absrel)), "depth_rmse": float(np.mean(rmse)),
                    "mask_iou": float(np.mean(ious)), "masks": len(ious),
                    "usage_all": every["usage"], "perplexity_all": every["perplexity"]})
        out.update({f"{k}_refined": float(np.mean(v)) for k, v in refined.items() if v})
    return out


@torch.no_grad()
def evaluate_guided(tok: ImageTokenizer, source: DatasetGuidedSource, n: int = 128, batch_size: int = 32) -> dict:
    """Depth and mask round trips on the held-out samples of a dataset, from the codes alone and,
    for a kind with a refiner, refined with the picture (AbsRel over valid depth pixels per image)."""
    lo, hi = tok.depth_range
    count = min(int(n), source.held_out)
    out: dict[str, list[float]] = {k: [] for k in ("depth_absrel", "depth_absrel_refined", "mask_iou",
                                                   "mask_iou_refined")}
    for start in range(0, count, batch_size):
        b = source.guided(range(start, min(count, start + batch_size)), held_out=True)
        codes = tok.encode(torch.as_tensor(depth_to_image(b["depth"], hi, min_depth=lo)))
        truth, valid = b["depth"].numpy(), b["valid"].numpy()
        for key, guide in (("depth_absrel", None), ("depth_absrel_refined", b["rgb"])):
            if guide is not None and not tok.has_refiner("depth"):
                continue
            for p, d, v in zip(tok.decode_depth(codes, guide=guide), truth, valid):
                if v.any():
                    out[key].append(depth_metrics(p, d, v)["absrel"])
        rows = b["has_mask"].numpy()
        if rows.any():
            m = b["mask"].numpy()[rows]
            codes = tok.encode(torch.from_numpy(mask_to_image(m)))
            out["mask_iou"].extend(_ious(tok.decode_mask(codes), m))
            if tok.has_refiner("mask"):
                out["mask_iou_refined"].extend(_ious(tok.decode_mask(codes, guide=b["rgb"][rows]), m))
    result = {k: float(np.mean(v)) for k, v in out.items() if v}
    result["images"] = count
    return result


def _ious(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    inter = (pred & truth).sum((1, 2))
    union = (pred | truth).sum((1, 2))
    return (inter / np.maximum(union, 1)).tolist()


def _rgb(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image.astype(np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


# ---------------------------------------------------------------- the command


def _parse_ints(text, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise TokenizerError(f"--{what} must be comma-separated integers, e.g. 8,8,6,5; got {text!r}") from None
    if not values or min(values) < 1:
        raise TokenizerError(f"--{what} must be positive integers, got {text!r}")
    return values


def _parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in str(text).split(","):
        key, _, value = part.partition("=")
        if key.strip() not in KINDS or not value:
            raise TokenizerError(f"--mix must look like rgb=2,depth=1,mask=1 (kinds: {', '.join(KINDS)}), got {text!r}")
        mix[key.strip()] = float(value)
    return mix


def _config_from_args(args) -> ImageTokenizerConfig:
    kw = {"image_size": args.image_size or 64, "quantizer": args.quantizer}
    for name in ("downsample", "stem", "res_blocks", "codebook_size"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "channels", None):
        kw["channels"] = _parse_ints(args.channels, "channels")
    if getattr(args, "levels", None):
        kw["levels"] = _parse_ints(args.levels, "levels")
    if getattr(args, "max_depth", None) is not None:
        kw["depth_range"] = (0.0, float(args.max_depth))
    if getattr(args, "fp16", False):
        kw["weights_dtype"] = "float16"
    return ImageTokenizerConfig(**kw)


def main(args) -> int:
    """Body of ``unio tokenizer image``; ``args`` as declared in unio/cli.py."""
    from tqdm import tqdm

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.steps < 1:
        raise TokenizerError(f"--steps must be >= 1, got {args.steps}")
    out = Path(args.out)
    run_dir = Path(getattr(args, "run_dir", None) or f"{out}.run")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state_file, opt_file = run_dir / "state.json", run_dir / "optimizer.pt"

    init = getattr(args, "init", None)
    decoder_only = bool(getattr(args, "decoder_only", False))
    if decoder_only and not (init or args.resume):
        raise TokenizerError("--decoder-only fine-tunes the decoder of an existing tokenizer: add --init DIR "
                             "(the tokenizer whose codes must stay as they are)")
    refine = _parse_refine(getattr(args, "refine", None))
    if getattr(args, "refine_kernel", None) is not None and not refine:
        raise TokenizerError("--refine-kernel sets the size of a new refiner; add --refine depth (or mask)")
    if refine:
        if not (init or args.resume):
            raise TokenizerError("--refine trains refiners for an existing tokenizer: add --init DIR")
        if decoder_only:
            raise TokenizerError("--refine trains the refiners alone, --decoder-only the decoder alone; fine-tune "
                                 "the decoder first, then run --refine with --init on its output")
        if args.data.startswith("folder:"):
            raise TokenizerError(f"--refine learns from pictures with their depth maps or masks, which --data "
                                 f"{args.data!r} (pictures only) does not have; use --data shapes or a dataset "
                                 "with them, e.g. depth:images=DIR,depth=DIR")
    if args.resume:
        if init:
            raise TokenizerError("--resume continues the run in --run-dir, which already knows where it started; "
                                 "drop --init")
        if not state_file.is_file():
            raise TokenizerError(f"--resume: {state_file} does not exist; start without --resume")
        state = json.loads(state_file.read_text())
        tok = ImageTokenizer.load(run_dir / "weights")
        start = int(state["step"])
        decoder_only = decoder_only or bool(state.get("args", {}).get("decoder_only"))
        refine = refine or _parse_refine(state.get("args", {}).get("refine"))
        init = state.get("args", {}).get("init")
        print(f"resuming {run_dir} at step {start}")
    else:
        if state_file.exists():
            raise TokenizerError(f"{run_dir} already holds a training run; pass --resume to continue it "
                                 "or choose another --out / --run-dir")
        torch.manual_seed(args.seed)
        if init:
            tok = _init_from(init, args)
        else:
            tok = ImageTokenizer(_config_from_args(args))
        start = 0
    codes_fingerprint = tok.codes_fingerprint
    origin = None  # where a fine-tuned tokenizer came from, recorded in its config
    if init:
        origin = (state.get("args", {}).get("origin") if args.resume else None) or {
            "init": str(init), "init_fingerprint": tok.fingerprint, "decoder_only": decoder_only,
            **({"refine": list(refine)} if refine else {}), "init_training": tok.config.training}
    if not args.resume:
        tok.config.training = {}
    for kind in refine:
        if not tok.has_refiner(kind):
            kernel = getattr(args, "refine_kernel", None)
            tok.add_refiner(kind, RefinerConfig(kernel=kernel) if kernel is not None else None)
    args.origin = origin
    cfg = tok.config
    mix = _parse_mix(getattr(args, "mix", None) or "rgb=2,depth=1,mask=1")
    eval_n = getattr(args, "eval_n", None) or 128
    if refine and args.data != "shapes":
        source = DatasetGuidedSource(args.data, cfg.image_size, cfg.depth_range, refine, held_out=eval_n)
    else:
        source = make_source(args.data, cfg.image_size, args.seed, mix=mix, depth_range=cfg.depth_range)
    tok.to(device)
    lr = args.lr or 1e-3
    if decoder_only:
        for p in [*tok.encoder.parameters(), *tok.quantizer.parameters(), *tok.refiners.parameters()]:
            p.requires_grad_(False)
    if refine:
        for name, p in tok.named_parameters():
            p.requires_grad_(name.split(".")[:2] in [["refiners", k] for k in refine])
    trainable = [p for p in tok.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    if args.resume and opt_file.is_file():
        opt.load_state_dict(torch.load(opt_file, map_location=device, weights_only=True))
    run_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in trainable)
    print(f"training {tok.extra_repr()} on {args.data} for {args.steps} steps "
          f"(batch {args.batch_size}, lr {lr}, device {device}, {n_params / 1e6:.2f}M parameters trained"
          + (", decoder only: every image keeps its codes" if decoder_only else "")
          + (f", {'+'.join(refine)} refiner(s) only: codes and decoder stay" if refine else "") + ")")

    eval_every = max(1, args.eval_every)
    warmup = min(200, max(1, args.steps // 10))
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="image tokenizer",
               mininterval=float(os.environ.get("UNIO_TQDM_INTERVAL", 2)), dynamic_ncols=True)
    t0, seen, ema = time.time(), 0, None
    metrics_file = run_dir / "metrics.jsonl"
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, args.steps, warmup)
        indices = range(step * args.batch_size, (step + 1) * args.batch_size)
        if refine:
            terms = refine_step(tok, opt, source.guided(indices), refine)
        else:
            terms = train_step(tok, opt, source.batch(indices).to(device), decoder_only=decoder_only)
        seen += len(indices)
        ema = terms["loss"] if ema is None else 0.98 * ema + 0.02 * terms["loss"]
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
        done = step + 1
        if done % eval_every == 0 or done == args.steps:
            record = {"step": done, **terms, "loss_ema": ema, "lr": opt.param_groups[0]["lr"],
                      "images_per_s": seen / max(1e-9, time.time() - t0), "cpu_s": time.process_time()}
            if isinstance(source, DatasetGuidedSource):
                record.update(evaluate_guided(tok, source, n=eval_n))
            else:
                record.update(evaluate(tok, args.data, n=eval_n, seed=args.seed + 1, batch_size=64))
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            with metrics_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            _checkpoint(tok, opt, run_dir, out, done, args, record, origin)
            if (decoder_only or refine) and tok.codes_fingerprint != codes_fingerprint:  # a frozen part moved
                raise TokenizerError("the codes changed while training only the decoder or refiners (the encoder "
                                     "or quantizer was updated); this is a bug, please report it")
            t0, seen = time.time(), 0
    bar.close()
    print(f"wrote {out} (config.json + model.safetensors, {tok.codebook_size} codes, "
          f"{tok.tokens_per_image} per {tok.image_size}px image)")
    return 0


def _init_from(init, args) -> ImageTokenizer:
    """The tokenizer in ``init`` in float32 for training; its architecture flags must not be given."""
    given = [f"--{name.replace('_', '-')}" for name in ("levels", "codebook_size", "channels", "downsample", "stem",
                                                        "res_blocks", "max_depth")
             if getattr(args, name, None) is not None]
    if given:
        raise TokenizerError(f"--init {init} takes the architecture from that tokenizer; drop {', '.join(given)}")
    tok = ImageTokenizer.load(init)
    if getattr(args, "image_size", None) not in (None, tok.image_size):
        raise TokenizerError(f"--init {init} was trained at --image-size {tok.image_size}, got "
                             f"--image-size {args.image_size}; drop the flag or pass {tok.image_size}")
    if getattr(args, "quantizer", None) not in (None, "fsq", tok.config.quantizer):
        raise TokenizerError(f"--init {init} uses the {tok.config.quantizer} quantizer; drop --quantizer")
    tok.float()
    if getattr(args, "fp16", False):
        tok.config.weights_dtype = "float16"
    return tok


def _parse_refine(text) -> tuple[str, ...]:
    """``--refine depth,mask`` -> ("depth", "mask"); None / "" -> ()."""
    if text is None or text == "":
        return ()
    kinds = tuple(dict.fromkeys(k.strip() for k in str(text).split(",")))
    bad = [k for k in kinds if k not in REFINABLE]
    if bad or not kinds:
        raise TokenizerError(f"--refine takes {', '.join(REFINABLE)} or both comma-separated (depth,mask), "
                             f"got {text!r}")
    return kinds


def _checkpoint(tok, opt, run_dir: Path, out: Path, step: int, args, record: dict, origin: dict | None = None) -> None:
    # Resumable state: fp32 weights as safetensors; the optimizer (tensors only) via torch.save.
    weights = ImageTokenizer(tok.config.__class__.from_dict({**tok.config.to_dict(), "weights_dtype": "float32"}))
    weights.load_state_dict(tok.state_dict())
    weights.save(run_dir / "weights")
    torch.save(opt.state_dict(), run_dir / "optimizer.pt")
    cli = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, dict, type(None)))
           and k != "func"}
    (run_dir / "state.json").write_text(json.dumps({"step": step, "args": cli}, indent=2) + "\n")
    # The tokenizer folder: the weights as they will be used (rounded to weights_dtype in place,
    # so the in-memory tokenizer and the saved one give identical codes).
    if tok.config.weights_dtype != "float32":
        with torch.no_grad():
            for p in tok.parameters():
                p.copy_(p.to(getattr(torch, tok.config.weights_dtype)).float())
    quality = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
               if k in ("psnr", "usage", "perplexity", "depth_absrel", "depth_rmse", "mask_iou", "images",
                        "depth_absrel_refined", "depth_rmse_refined", "mask_iou_refined")}
    tok.config.training = {"data": args.data, "steps": step, "batch_size": args.batch_size, "seed": args.seed,
                           "held_out_quality": quality, **({"fine_tuned": origin} if origin else {})}
    tok.save(out)

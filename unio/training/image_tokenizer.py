"""Training the VQ image tokenizer: ``unio tokenizer image --data shapes --out DIR``.

The data mixes RGB pictures with depth maps and object masks drawn as images by
:mod:`unio.tokenizers.dense` (:mod:`unio.data.pictures`): a tokenizer trained on RGB alone
reproduces binary masks badly (IoU ~0.2 on the shapes world), because white-on-black silhouettes
and grey ramps are far from anything it has seen. Shapes samples are rendered on the fly (about
0.4 ms each), so every step sees fresh scenes and there is nothing to overfit.

Loss: L1 + L2 on the reconstruction (plus the quantizer's own auxiliary loss for vq / lfq).
The learning rate warms up, then follows a cosine to zero at ``--steps`` (:mod:`.schedule`, the
schedule ``unio train`` uses too).

Fine-tuning: ``--init DIR`` starts from an existing tokenizer (its architecture and weights);
with ``--decoder-only`` the encoder and quantizer stay frozen, so every image keeps its codes and
a model trained on DIR can take the new decoder (``unio tokenizer swap-image``). With
``--refine depth`` (or ``mask``, or ``depth,mask``) only image-guided refiners of decoded maps
learn (:mod:`unio.tokenizers.refine`): each step encodes and decodes depth maps / masks with the frozen
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
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.pictures import KINDS, GuidedPictures, make_pictures
from ..errors import TokenizerError
from ..tokenizers.dense import depth_to_image, mask_to_image
from ..tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from ..tokenizers.refine import REFINABLE, RefinerConfig
from .image_tokenizer_eval import evaluate, evaluate_guided
from .schedule import lr_at

__all__ = ["main", "train_step", "refine_step"]


# ---------------------------------------------------------------- optimisation


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
    """One step of the refiners named in ``kinds`` on a ``guided`` batch (:class:`~unio.data.pictures.ShapesPictures`,
    :class:`~unio.data.pictures.GuidedPictures`): ``rgb``, ``depth`` with its ``valid`` pixels, ``mask`` with
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
    """Body of ``unio tokenizer image``; ``args`` as declared in unio/cli/main.py."""
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
        source = GuidedPictures(args.data, cfg.image_size, cfg.depth_range, refine, held_out=eval_n)
    else:
        source = make_pictures(args.data, cfg.image_size, args.seed, mix=mix, depth_range=cfg.depth_range)
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
            if isinstance(source, GuidedPictures):
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

"""Quality and speed of a VQ image tokenizer on held-out shapes scenes.

    python benchmarks/vq_quality.py --tokenizer tokenizers/shapes/image --n 500 --seed 2 --out vq_quality.json

Measures, on ``--n`` scenes of ``ShapesWorld(seed=--seed)`` (the shipped tokenizer was trained
on seed 0 and monitored on seed 1): the share of reconstructions the non-learned shapes judge
reads as their caption says (and of the real images: the judge's calibration), RGB reconstruction PSNR, codebook usage and perplexity
(of the RGB codes, and of RGB + depth + mask codes together), the depth round trip (AbsRel and
RMSE on object pixels, per image then averaged), the mask round trip (IoU per object, averaged)
and encode+decode throughput in images/s on this machine; for a tokenizer with image-guided
refiners (``--refine``), the depth and mask round trips again with the scene's picture as the
guide, and depth decoding speed with and without the depth refiner. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from unio.data.shapes import ShapesWorld
from unio.tokenizers.image import ImageTokenizer
from unio.training.image_tokenizer_eval import evaluate

TARGETS = {"judge": (">=", 0.95), "judge_real": (">=", 0.98), "psnr": (">=", 32.0), "usage": (">=", 0.5),
           "mask_iou": (">=", 0.97), "depth_absrel": ("<=", 0.03), "mask_iou_refined": (">=", 0.97),
           "depth_absrel_refined": ("<=", 0.03)}


def rate(step, n: int, batch_size: int, repeats: int = 3) -> float:
    """Items/s of ``step(start, stop)`` run over ``n`` items in batches (best of ``repeats`` passes)."""
    step(0, min(n, batch_size))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, n, batch_size):
            step(i, i + batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return n / best


def throughput(tok: ImageTokenizer, images: torch.Tensor, batch_size: int, repeats: int = 3) -> float:
    """encode + decode images/s (best of ``repeats`` passes over ``images``)."""
    return rate(lambda i, j: tok.decode(tok.encode(images[i:j])), len(images), batch_size, repeats)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default="shapes", help="tokenizer folder, or 'shapes' for the shipped one")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=2, help="ShapesWorld seed (not one used in training)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="vq_quality.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = ImageTokenizer.load(args.tokenizer, device=args.device)

    t = time.perf_counter()
    quality = evaluate(tok, "shapes", n=args.n, seed=args.seed, batch_size=args.batch_size, calibrate=True)
    eval_s = time.perf_counter() - t
    world = ShapesWorld(image_size=tok.image_size, seed=args.seed)
    n_speed = min(args.n, 200)
    images = torch.from_numpy(np.stack([np.asarray(world[i]["image"], np.float32) / 255 for i in range(n_speed)]))
    pictures = images.permute(0, 3, 1, 2).contiguous().to(args.device)
    speed = throughput(tok, pictures, args.batch_size)
    refine_speed = {}
    if tok.has_refiner("depth"):  # decoding depth codes with the picture as the guide, vs without
        codes = tok.encode(pictures)
        refine_speed["decode_depth_per_s"] = rate(lambda i, j: tok.decode_depth(codes[i:j]), len(codes),
                                                  args.batch_size)
        refine_speed["decode_depth_refined_per_s"] = rate(
            lambda i, j: tok.decode_depth(codes[i:j], guide=pictures[i:j]), len(codes), args.batch_size)

    result = {"tokenizer": str(args.tokenizer), "fingerprint": tok.fingerprint, "codebook_size": tok.codebook_size,
              "tokens_per_image": tok.tokens_per_image, "image_size": tok.image_size, "seed": args.seed,
              **quality, "encode_decode_images_per_s": speed, **refine_speed, "device": args.device,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "eval_seconds": eval_s}
    rows = [("judge on reconstructions", "judge"), ("judge on real images", "judge_real"), ("PSNR (dB, RGB)", "psnr"), ("codebook usage (RGB)", "usage"), ("perplexity (RGB)", "perplexity"),
            ("usage (RGB+depth+mask)", "usage_all"), ("depth AbsRel (object px)", "depth_absrel"),
            ("depth RMSE (object px)", "depth_rmse"), ("mask IoU", "mask_iou"),
            ("  refined: depth AbsRel", "depth_absrel_refined"), ("  refined: depth RMSE", "depth_rmse_refined"),
            ("  refined: mask IoU", "mask_iou_refined"), ("encode+decode images/s", "encode_decode_images_per_s"),
            ("decode depth maps/s", "decode_depth_per_s"), ("  refined: maps/s", "decode_depth_refined_per_s")]
    rows = [(label, key) for label, key in rows if key in result]
    print(f"{tok.codebook_size} codes, {tok.tokens_per_image} per {tok.image_size}px image; "
          f"{result['images']} images, {result.get('masks', 0)} masks of ShapesWorld(seed={args.seed}); "
          f"{args.device}, {result['threads']} threads")
    print(f"{'metric':<28}{'value':>12}  target")
    for label, key in rows:
        op, goal = TARGETS.get(key, ("", None))
        ok = "" if goal is None else (f"{op} {goal}  " + ("ok" if (result[key] >= goal if op == ">=" else result[key] <= goal)
                                                           else "MISSED"))
        print(f"{label:<28}{result[key]:>12.4f}  {ok}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""Image-text retrieval speed: contrastive embeddings + one matrix product vs the likelihood score.

    python benchmarks/retrieval_speed.py --n 10000 --threads 1 --out benchmarks/results/retrieval_speed.json

The gallery is ``--n`` scenes of ``ShapesWorld(64, seed=--seed)``: n images and their n captions.
The model is ``--model`` (an export directory with an embedding head), else an UNTRAINED ``tiny``
preset (d_model 256, 4 + 4 layers) with ``projection_dim`` 256 and the shipped shapes tokenizers,
written to a temporary folder: speed does not depend on the weights, so no recall is reported.

Measured: embedding the n images and the n texts (``Pipeline.embed_images`` / ``embed_texts``,
letterboxing included), then ranking the whole gallery both ways (the n x n similarity matrix and
the top 10 of every row, text -> image and image -> text; ``Pipeline.retrieve`` on the embeddings),
and re-ranking the top 10 of ``--rerank-queries`` text queries by the caption likelihood. The
baseline, ``Pipeline.score(image, texts)`` (one decoder pass per image-text pair), is timed on
``--pairs`` pairs and EXTRAPOLATED to all n x n pairs: nobody runs it to the end. Prints a table,
writes JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import unio
from unio.data.shapes import ShapesWorld, shapes_classes
from unio.export import init_export
from unio.resources import data_path


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="an export with an embedding head (default: untrained tiny)")
    p.add_argument("--n", type=int, default=10000, help="gallery size: images and texts each")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pairs", type=int, default=200, help="image-text pairs the likelihood baseline is timed on")
    p.add_argument("--rerank-queries", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/retrieval_speed.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or init_export("tiny", data_path("tokenizers", "shapes"), Path(tmp) / "tiny",
                                          classes=shapes_classes(), quiet=True, projection_dim=256)
        return run(args, unio.load(model, device="cpu", batch_size=args.batch_size), argv)


def run(args, pipe, argv) -> dict:
    described = args.model or "untrained tiny preset (d_model 256, 4+4 layers), projection_dim 256"
    world = ShapesWorld(64, seed=args.seed)
    samples = [world[i] for i in range(args.n)]
    images, texts = [s["image"] for s in samples], [s["caption"] for s in samples]

    image_emb, t_img = _timed(lambda: pipe.embed_images(images))
    text_emb, t_txt = _timed(lambda: pipe.embed_texts(texts))
    _, t_t2i = _timed(lambda: pipe.retrieve(text_emb, image_emb, top_k=10))
    _, t_i2t = _timed(lambda: pipe.retrieve(image_emb, text_emb, top_k=10))
    q = min(args.rerank_queries, args.n)
    _, t_rerank = _timed(lambda: pipe.retrieve(texts[:q], image_emb, top_k=10, rerank=10))

    per_image = max(1, args.pairs // 50)  # the baseline: a few images, each against a block of texts
    per_text = max(1, args.pairs // per_image)
    _, t_score = _timed(lambda: pipe.score(images[:per_image], texts[:per_text], batch_size=args.batch_size))
    pair_s = t_score / (per_image * per_text)
    n = args.n
    rows = [
        ("embed images", f"{n:,}", t_img, "measured"),
        ("embed texts", f"{n:,}", t_txt, "measured"),
        ("rank text -> image (all queries)", f"{n:,} x {n:,}", t_t2i, "measured"),
        ("rank image -> text (all queries)", f"{n:,} x {n:,}", t_i2t, "measured"),
        ("embeddings: embed both + rank both ways", f"{n:,} x {n:,}", t_img + t_txt + t_t2i + t_i2t, "measured"),
        ("re-rank top 10 by likelihood, per query", "10 pairs", t_rerank / q, f"measured on {q} queries"),
        ("likelihood score, per pair", "1 pair", pair_s, f"measured on {per_image * per_text} pairs"),
        ("likelihood score, one query vs gallery", f"{n:,} pairs", pair_s * n, "extrapolated"),
        ("likelihood score, all pairs", f"{n * n:,} pairs", pair_s * n * n, "extrapolated"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"model: {described}; CPU, {args.threads} thread(s), batch size {args.batch_size}")
    print(f"{'step':<{width}}  {'items':>22}  {'time':>12}  how")
    for name, items, seconds, how in rows:
        print(f"{name:<{width}}  {items:>22}  {_human(seconds):>12}  {how}")
    total_embed = t_img + t_txt + t_t2i + t_i2t
    print(f"speed-up of embeddings over the likelihood score on all pairs: {pair_s * n * n / total_embed:,.0f}x "
          "(the score is extrapolated)")
    result = {
        "command": "python benchmarks/retrieval_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": described, "n": n, "seed": args.seed, "threads": args.threads, "batch_size": args.batch_size,
        "embedding_dim": int(image_emb.vectors.shape[1]),
        "seconds": {"embed_images": t_img, "embed_texts": t_txt, "rank_text_to_image": t_t2i,
                    "rank_image_to_text": t_i2t, "rerank_top10_per_query": t_rerank / q,
                    "likelihood_per_pair": pair_s},
        "measured_on": {"rerank_queries": q, "likelihood_pairs": per_image * per_text},
        "extrapolated_seconds": {"likelihood_one_query_vs_gallery": pair_s * n, "likelihood_all_pairs": pair_s * n * n},
        "speedup_all_pairs": pair_s * n * n / total_embed,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "device": "cpu"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

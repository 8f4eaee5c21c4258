"""The ``unio`` command (also ``python -m unio``).

Every subcommand's arguments are declared here; the work is done by library functions,
imported only when their subcommand runs so that ``unio --help`` stays instant. A
:class:`~unio.errors.UnioError` is printed as one message (no traceback) with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UnioError

__all__ = ["main", "build_parser"]


def _cmd_shapes(args):
    if args.texts:
        from .shapes import write_text_corpus
        lines = write_text_corpus(args.texts, n=args.n, seed=args.seed, prompt_files=args.prompts)
        print(f"wrote {args.texts} ({lines} lines: the texts of {args.n} samples"
              + (f" and the templates of {len(args.prompts)} prompt files)" if args.prompts else ")"))
        return
    from .shapes import write_preview
    write_preview(n=args.n, out=args.out, seed=args.seed, image_size=args.image_size, max_objects=args.max_objects)


def _cmd_fashion(args):
    if args.texts:
        from .fashion import write_text_corpus
        lines = write_text_corpus(args.texts, n=args.n, seed=args.seed, prompt_files=args.prompts, split=args.split,
                                  root=args.root)
        print(f"wrote {args.texts} ({lines} lines: the texts of {args.n} {args.split} scenes"
              + (f" and the templates of {len(args.prompts)} prompt files)" if args.prompts else ")"))
        return
    from .fashion import write_preview
    write_preview(n=args.n, out=args.out, seed=args.seed, split=args.split, image_size=args.image_size,
                  max_objects=args.max_objects, root=args.root)


def _cmd_tokenizer(args):
    if args.kind == "text":
        from pathlib import Path

        from ..tokenizers.text import TextTokenizer
        tok = TextTokenizer.train([Path(p) for p in args.input], vocab_size=args.vocab_size, path=args.out, model_type=args.model_type)
        print(f"wrote {args.out} ({tok.vocab_size} pieces)")
    elif args.kind == "swap-image":
        from ..export import swap_image_tokenizer
        out = swap_image_tokenizer(args.model, args.tokenizer, args.out)
        print(f"wrote {out}: the model with the image tokenizer from {args.tokenizer}")
    else:
        from ..training.image_tokenizer import main as train_image_tokenizer
        train_image_tokenizer(args)


def _cmd_predict(args):
    from .predict import main as predict
    return predict(args)


class _IntermixedParser(argparse.ArgumentParser):
    """Lets image files follow options (`unio predict detect --model DIR a.jpg b.jpg`): plain
    argparse binds a ``nargs="*"`` positional before the options and then rejects later files."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _cmd_train(args):
    from ..training.loop import main as train
    return train(args)


def _cmd_eval(args):
    from ..evaluate import main as evaluate
    return evaluate(args)


def _cmd_export(args):
    if args.onnx and (not os.path.exists(args.run_dir) or os.path.isfile(os.path.join(args.run_dir, "unio.json"))):
        # an export directory or a shipped model's name: copied to OUT with its graphs
        from ..errors import InputError
        given = [f for f, v in (("--step", args.step), ("--dtype", args.dtype), ("--lora", args.lora)) if v is not None]
        if given:
            raise InputError(f"{' and '.join(given)} apply to a training run, and {args.run_dir} is an export; "
                             "drop them")
        src = args.run_dir
    else:
        from ..training.run_export import export
        src = export(args.run_dir, args.out_dir, step=args.step, dtype=args.dtype, lora=args.lora)
    if args.onnx:
        from ..backends.onnx_export import export_onnx
        out = export_onnx(src, args.out_dir)
        print(f"wrote {out} with ONNX graphs (encoder.onnx, decoder.onnx); run them with "
              f"unio.load({str(out)!r}, backend=\"onnxruntime\")")


def _cmd_init(args):
    from ..export import init_export
    init_export(preset=args.preset, tokenizers=args.tokenizers, out=args.out, image_size=args.image_size,
                patch_size=args.patch_size, seed=args.seed, num_bins=args.num_bins)


def _cmd_demo(args):
    from .demo import main as demo
    return demo(args)


def _cmd_data(args):
    from .data import main as data
    return data(args)


def _cmd_serve(args):
    from .serve import main as serve
    return serve(args)


def _world_arguments(s, out: str, image_size: int, items: str) -> None:
    """The options ``unio shapes`` and ``unio fashion`` share: how many, where, which seed and size."""
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--out", default=out)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=image_size)
    s.add_argument("--max-objects", type=int, default=4)
    s.add_argument("--texts", metavar="FILE", help="instead of a preview, write every caption, question, answer "
                   f"and expression of the n {items} to FILE (a text-tokenizer corpus)")
    s.add_argument("--prompts", nargs="*", default=[], metavar="YAML",
                   help="with --texts: also add these prompt template files (e.g. prompts/*.yaml)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unio", description="Unified sequence-to-sequence vision-language models.")
    p.add_argument("--version", action="version", version=_version())
    # the deepspeed launcher puts --local_rank before the subcommand (`python -m unio --local_rank=0 train ...`)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("predict", help="run one task on images and write predictions")
    s.__class__ = _IntermixedParser
    s.add_argument("task", help="task name (caption, vqa, classify, detect, ground, describe_region, ...)")
    s.add_argument("images", nargs="*", help="image files or folders (read as they are shown: EXIF orientation "
                   "applied, transparency on white; large files decoded smaller, results in their own pixels)")
    s.add_argument("--model", required=True, help="export directory or shipped model name (e.g. shapes-demo)")
    s.add_argument("--text", help="question / expression / prompt text the task needs")
    s.add_argument("--labels", help="comma-separated label set for classify")
    s.add_argument("--box", help="x1,y1,x2,y2 pixel box for region tasks and inpaint")
    s.add_argument("--out", help="predictions file (.jsonl, or .json with --format coco); for generate_image, "
                   "inpaint and depth on one image it may name the picture itself (.png, .jpg; depth also .npy)")
    s.add_argument("--viz", help="folder for pictures of the predictions (images under 384 px drawn larger)")
    s.add_argument("--viz-threshold", type=float, default=0.3,
                   help="--viz draws detections scoring at least this (default 0.3; the records keep every box)")
    s.add_argument("--format", choices=["jsonl", "coco"], default="jsonl",
                   help="coco: detection results pycocotools' loadRes reads; without --gt, image_id is the file "
                        "name's number (000000397133.jpg -> 397133) or the 1-based position, category_id the "
                        "1-based index in the model's object classes (named in OUT.categories.json)")
    s.add_argument("--gt", metavar="INSTANCES.json", help="with --format coco: take image and category ids from this "
                   "COCO ground-truth file (images by file name, categories by name); unmapped ones are an error")
    s.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="an image that cannot be read (missing, truncated, not a picture, HEIC without pillow-heif "
                        "...): stop (default) ends the command with its reason before the model loads (exit 2); "
                        "skip predicts on the others, lists each skipped file with its reason on stderr at the "
                        "end, and exits with status 1 (0 when every image was read)")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    s.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="run the network in torch, or in onnxruntime from the ONNX graphs that "
                        "`unio export DIR OUT --onnx` wrote (beam search needs torch)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; one "
                   "thread each when another torch job shares the cores)")
    s.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="decoding option of the task, repeatable: num_beams=3, threshold=0.5 (detect), "
                        "guidance=3 and seed=0 (generate_image), top_p=0.9 ...")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("train", help="train under DeepSpeed from a recipe")
    s.add_argument("recipe", help="recipe YAML (see recipes/)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted recipe key, e.g. --set train.steps=20")
    s.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    s.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("eval", help="evaluate a model on a dataset, per task")
    s.add_argument("--model", required=True, help="export directory or shipped model name (e.g. shapes-demo)")
    s.add_argument("--data", default="shapes:1", help="shapes:SEED, fashion-scenes:SEED, a .jsonl manifest, a .yaml data entry or recipe, "
                   "or SOURCE:VALUE,key=value (e.g. coco:images=DIR,instances=FILE)")
    s.add_argument("--tasks", nargs="*", default=None, help="task names (default: every task of the model)")
    s.add_argument("--bootstrap", type=int, default=0, metavar="B",
                   help="also resample the examples B times for each headline that is not a mean over examples "
                        "(mAP, CIDEr) to give its 95%% interval (means always get one)")
    s.add_argument("--n", type=int, default=200, help="samples per task")
    s.add_argument("--out", help="metrics JSON")
    s.add_argument("--predictions", metavar="FILE.jsonl",
                   help="also write one JSON line per example: prompt, prediction, truth and its own score")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--device", default=None)
    s.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="run the network in torch, or in onnxruntime from the ONNX graphs that "
                        "`unio export DIR OUT --onnx` wrote (beam search needs torch)")
    s.add_argument("--seed", type=int, default=0, help="which item of each sample is asked, and image sampling")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--option", dest="options", action="append", default=[], metavar="[TASK.]KEY=VALUE",
                   help="decoding option, repeatable; without TASK. it applies to every task: num_beams=3, "
                        "generate_image.guidance=3, detect.max_objects=20 ...")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("export", help="write an export directory (what unio.load reads) from a run; --onnx adds "
                       "ONNX graphs")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    s.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="weight precision stored (default float32; float16 halves the size)")
    s.add_argument("--lora", default=None, choices=["merged", "adapters"],
                   help="a LoRA run: adapters merged into the weights, or adapters over the base model "
                        "(default: the recipe's train.lora.export)")
    s.add_argument("--onnx", action="store_true",
                   help="also write the encoder and decoder as ONNX graphs, for unio.load(OUT, backend=\"onnxruntime\") "
                        "(RUN_DIR may then also be an export directory or a shipped model's name; "
                        "pip install \"unio[onnx]\")")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("init", help="write an untrained export directory")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--tokenizers", default="tokenizers/shapes")
    s.add_argument("--out", required=True)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--patch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-bins", type=int, default=1000, help="location bins per image side (Pix2Seq: 1000)")
    s.set_defaults(func=_cmd_init)

    s = sub.add_parser("tokenizer", help="train a text (SentencePiece) or image (VQ) tokenizer")
    tk = s.add_subparsers(dest="kind", metavar="KIND", required=True)
    t = tk.add_parser("text", help="train a SentencePiece model")
    t.add_argument("--input", nargs="+", required=True, help="UTF-8 text files, one sentence per line")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="output .model path")
    t.add_argument("--model-type", default="bpe", choices=["unigram", "bpe"],
                   help="bpe keeps whole words of small templated corpora; unigram suits large ones")
    t = tk.add_parser("image", help="train a VQ image tokenizer")
    t.add_argument("--data", default="shapes",
                   help="shapes, folder:PATH for your own images, or any data spec (idx:images=FILE, "
                        "coco:images=DIR,...); with --refine: shapes or a dataset with depth "
                        "maps / masks as unio eval reads it (depth:images=DIR,depth=DIR, a .jsonl manifest ...)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--image-size", type=int, default=None, help="default 64 (with --init: that tokenizer's)")
    t.add_argument("--quantizer", default="fsq", choices=["fsq", "vq", "lfq"])
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--device", default=None)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--run-dir", default=None, help="resumable training state (default: OUT.run)")
    t.add_argument("--levels", default=None, help="fsq levels, e.g. 8,8,6,5 (codebook = their product)")
    t.add_argument("--codebook-size", type=int, default=None, help="vq / lfq codebook size")
    t.add_argument("--channels", default=None, help="widths per resolution, e.g. 64,128,192")
    t.add_argument("--downsample", type=int, default=None, choices=[8, 16])
    t.add_argument("--stem", type=int, default=None, choices=[1, 2, 4], help="pixel-unshuffle factor of the stem")
    t.add_argument("--res-blocks", type=int, default=None)
    t.add_argument("--mix", default=None, help="shapes data mix, e.g. rgb=2,depth=1,mask=1")
    t.add_argument("--max-depth", type=float, default=None, help="depth range [0, MAX] drawn as grey (shapes: 1)")
    t.add_argument("--eval-n", type=int, default=128, help="held-out images per evaluation")
    t.add_argument("--fp16", action="store_true", help="store the tokenizer weights in float16")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--init", metavar="DIR", default=None,
                   help="start from this image tokenizer (its architecture and weights) instead of from scratch")
    t.add_argument("--decoder-only", action="store_true",
                   help="with --init: train only the decoder; every image keeps its codes, so models trained on "
                        "DIR can take the new decoder (unio tokenizer swap-image)")
    t.add_argument("--refine", metavar="KINDS", default=None,
                   help="with --init: train only image-guided refiners of decoded maps (depth, mask or "
                        "depth,mask); codes and decoder stay as they are (unio tokenizer swap-image)")
    t.add_argument("--refine-kernel", type=int, default=None,
                   help="neighbourhood side of a new refiner (odd, 3-15; default 9)")
    t = tk.add_parser("swap-image", help="give an export directory an image tokenizer that makes the same codes "
                      "(e.g. a decoder fine-tuned with --decoder-only, or one with --refine refiners)")
    t.add_argument("--model", required=True, help="export directory (or shipped model name)")
    t.add_argument("--tokenizer", required=True, help="image tokenizer folder (config.json + model.safetensors)")
    t.add_argument("--out", required=True, help="the new export directory (may be --model itself)")
    s.set_defaults(func=_cmd_tokenizer)

    s = sub.add_parser("shapes", help="preview the built-in shapes world: a picture grid + annotations")
    _world_arguments(s, "shapes-preview", 64, "samples")
    s.set_defaults(func=_cmd_shapes)

    s = sub.add_parser("fashion", help="preview the fashion-scenes world (real Fashion-MNIST photos): a picture "
                       "grid + annotations")
    _world_arguments(s, "fashion-preview", 128, "scenes")
    s.add_argument("--split", default="train", choices=["train", "test"], help="scenes of the training or test photos")
    s.add_argument("--root", default=None, help="folder of the Fashion-MNIST IDX files (default: $UNIO_FASHION_MNIST, "
                   "else Debian's /usr/share/datasets/fashion-mnist)")
    s.set_defaults(func=_cmd_fashion)

    s = sub.add_parser("demo", help="the shipped shapes-demo model doing every task, with a picture sheet "
                       "(--web: a page to try it in a browser)")
    s.add_argument("--out", default="unio-demo")
    s.add_argument("--n", type=int, default=50, help="images per task for the metrics")
    s.add_argument("--seed", type=int, default=1000, help="shapes world seed of the demo images (not used in training)")
    s.add_argument("--device", default=None)
    s.add_argument("--model", default=None, help="an export directory instead of the shipped shapes-demo model")
    s.add_argument("--threads", type=int, default=1, help="torch CPU threads; the demo model is so small that one "
                   "thread is fastest, and by far on a busy machine")
    s.add_argument("--web", action="store_true", help="serve the model with a page to try every task in a browser "
                   "(unio serve's server) and print its address, instead of the sheet")
    s.add_argument("--host", default="127.0.0.1", help="with --web: address to listen on (loopback only by default; "
                   "any other needs --token)")
    s.add_argument("--port", type=int, default=8000, help="with --web: the port")
    s.add_argument("--token", default=None, help="with --web: bearer token clients must send (default: $UNIO_SERVE_TOKEN)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("serve", help="serve a model over HTTP to many users at once, with dynamic batching")
    s.add_argument("--model", required=True, help="export directory or shipped model name (e.g. shapes-demo)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; any other "
                   "needs --token)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--batching", choices=("step", "call"), default="step",
                   help="step (default): a request joins the decoding batch at the next step and leaves it with "
                   "its answer (iteration-level batching); call: requests arriving within --max-wait-ms share one "
                   "model call per task and options")
    s.add_argument("--max-batch", type=int, default=16, help="rows decoding at once (step) or requests per model "
                   "call (call)")
    s.add_argument("--max-wait-ms", type=float, default=10.0, help="--batching call: how long a request waits for "
                   "others to batch with")
    s.add_argument("--mix-tasks", action="store_true", help="--batching call: let greedy requests of any tasks "
                   "share a model call instead of batching each task and options apart")
    s.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond this get 429")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request, else 504")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit, else 413")
    s.add_argument("--max-pixels", type=int, default=4096 * 4096, help="image size limit (width x height), else 413")
    s.add_argument("--token", default=None, help="bearer token clients must send (default: $UNIO_SERVE_TOKEN)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    s.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                   help="run the network in torch, or in onnxruntime from the ONNX graphs that "
                        "`unio export DIR OUT --onnx` wrote (beam search needs torch)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("data", help="dataset tools: pack any dataset unio reads into WebDataset shards")
    dk = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = dk.add_parser("pack", help="write WebDataset .tar shards (+ index.json) from a data spec")
    t.add_argument("spec", help="any data spec unio eval --data takes: shapes:SEED (with --n), a .jsonl manifest, "
                   "coco:images=DIR,instances=FILE, classes:DIR, idx:images=FILE, webdataset:DIR ...")
    t.add_argument("--out", required=True, help="folder for shard-000000.tar, shard-000001.tar, ... and index.json")
    t.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    t.add_argument("--n", type=int, default=None, help="pack the first N samples (required for the endless shapes world)")
    t.add_argument("--overwrite", action="store_true", help="replace the shards OUT already holds")
    t.add_argument("--on-bad-record", choices=["error", "skip"], default="error",
                   help="a sample that cannot be read: stop with its name (error), or leave it out and count it")
    s.set_defaults(func=_cmd_data)
    return p


def _version() -> str:
    from .. import __version__
    return f"unio {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UnioError as exc:
        print(f"unio {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if os.environ.get("UNIO_CLI_DEBUG"):
        print(f"[unio] {args.command} returned {result!r}", file=sys.stderr)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())

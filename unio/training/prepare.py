"""What a ``unio train`` run sets up before its first step: the run directory (``recipe.yaml``,
``tokenizers/``, a text tokenizer trained on the data when the recipe asks), the closed label
sets the export records, the model (random or ``model.init``), and how samples become examples
and batches (used in DataLoader workers too)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import torch

from ..data.collate import collate
from ..data.formats import open_source
from ..errors import CheckpointError, RecipeError
from ..model import UnioConfig, UnioForConditionalGeneration
from ..model.lora import add_lora
from ..prompts import Prompts
from ..recipe import model_overrides, save_recipe
from ..tasks import get_task
from ..tasks.dense import Segment
from ..tasks.ground import NONE, NOT_FOUND, Ground
from ..tokenizers.text import TextTokenizer
from .checkpoint import CKPT_DIR, latest_tag
from .run_export import INIT_RECORD

__all__ = ["prepare_run", "train_text_tokenizer", "run_classes", "build_model", "make_example", "collate_examples"]


def prepare_run(recipe: dict, run: Path, resume: bool, rank: int) -> None:
    """Check that the run starts or resumes as asked; rank 0 writes recipe.yaml and tokenizers/
    (copied, or a text tokenizer trained on the data)."""
    ckpts = run / CKPT_DIR
    if not resume and latest_tag(ckpts) is not None:
        raise RecipeError(f"{run} already holds checkpoints; pass --resume to continue that run, or set "
                          "another out= (e.g. --set out=runs/new)")
    if resume and latest_tag(ckpts) is None:
        raise CheckpointError(f"--resume: {ckpts} holds no complete checkpoint; start the run without --resume")
    if rank != 0:
        return
    run.mkdir(parents=True, exist_ok=True)
    command = "unio train " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None
    save_recipe(recipe, run / ("recipe.yaml" if not resume else "recipe.resume.yaml"), command=command)
    if not resume:  # a run that died before its first checkpoint starts over
        for name in ("metrics.jsonl", "eval.jsonl", INIT_RECORD):
            (run / name).unlink(missing_ok=True)
    tok = run / "tokenizers"
    if resume and (tok / "text.model").is_file():
        return
    tok.mkdir(exist_ok=True)
    src = Path(recipe["model"]["init"] or recipe["tokenizers"])
    if (src / "image").is_dir():
        shutil.copytree(src / "image", tok / "image", dirs_exist_ok=True)
    if recipe["text_tokenizer"]["train"]:
        train_text_tokenizer(recipe, tok / "text.model")
    else:
        shutil.copy2(src / "text.model", tok / "text.model")


def train_text_tokenizer(recipe: dict, path: Path) -> None:
    """SentencePiece over the training sources' texts (captions, questions, answers, labels) and the prompts."""
    tt = recipe["text_tokenizer"]
    texts: list[str] = []
    budget = tt["max_texts"] // len(recipe["data"]["train"])
    for spec in recipe["data"]["train"]:
        texts.extend(open_source(spec, recipe["data"]["on_bad_record"]).texts(budget))
    prompts = Prompts.load(recipe["prompts"])
    for task in prompts.tasks:  # prompt words recur in every example: repeat them so they get whole pieces
        templates = prompts.templates(task) + [prompts.unconditional(task) or ""]
        words = [re.sub(r"\{\w+\}", " ", tpl).strip() for tpl in templates]
        texts.extend([w for w in words if w] * 20)
    if not texts:
        raise RecipeError("text_tokenizer.train: the training sources hold no text to learn from")
    TextTokenizer.train(texts, vocab_size=tt["vocab_size"], path=path, model_type=tt["model_type"])


def run_classes(recipe: dict, sources) -> dict:
    """Closed label sets the export records (classify without labels, detection labels): the init
    model's or the tokenizer folder's, then those the training sources declare, in first-seen order."""
    tok = Path(recipe["model"]["init"] or recipe["tokenizers"])
    known = {}
    if recipe["model"]["init"]:
        known = json.loads((tok / "unio.json").read_text()).get("classes") or {}
    elif (tok / "classes.json").is_file():
        known = json.loads((tok / "classes.json").read_text())
    out = {k: dict.fromkeys(v) for k, v in known.items()}
    for k in ("image", "object"):
        out.setdefault(k, {})
    for s in sources:
        out["image"].update(dict.fromkeys(getattr(s, "classes", [])))
        out["object"].update(dict.fromkeys(getattr(s, "object_labels", [])))
        for kind, labels in (getattr(s, "class_lists", None) or {}).items():  # e.g. clips' "action"
            out.setdefault(kind, {}).update(dict.fromkeys(labels))
    # Grounding / segmentation trained on samples with expressions that name nothing ("absent") learn
    # to answer "not there": the export says so, which lets decoding write that answer.
    for s, entry in zip(sources, recipe["data"]["train"]):
        if set(entry.get("tasks") or {}) & {Ground.name, Segment.name} and _has_absent(s):
            out.setdefault(NOT_FOUND, {})[NONE] = None
    return {k: list(v) for k, v in out.items() if v}


def _has_absent(source) -> bool:
    try:
        return len(source) > 0 and bool(source[0].get("absent"))
    except Exception:  # a reader whose first record cannot be read says nothing here
        return False


def build_model(recipe: dict, ctx):
    """The model at step 0: the ``model.init`` export's weights, else a seeded random preset; with
    ``train.lora``, LoRA adapters on it and everything else frozen."""
    m = recipe["model"]
    torch.manual_seed(recipe["train"]["seed"])
    if m["init"]:  # overrides (e.g. dropout) apply to the config before the modules are built
        model = UnioForConditionalGeneration.from_pretrained(m["init"], vocab=ctx.vocab, dtype=torch.float32,
                                                             **model_overrides(m))
    else:
        config = UnioConfig.preset(m["preset"], vocab=ctx.vocab, image_size=m["image_size"],
                                   patch_size=m["patch_size"], **model_overrides(m))
        model = UnioForConditionalGeneration(config)
    lora = recipe["train"].get("lora")
    if lora:
        add_lora(model, r=lora["r"], alpha=lora["alpha"], targets=lora["targets"], dropout=lora["dropout"])
    return model


def make_example(task_name: str, sample: dict, rng, ctx):
    """One training example of a task from a sample, None when the sample lacks what the task needs."""
    task = get_task(task_name)
    if not task.can_build(sample):
        return None
    return task.build(sample, ctx, rng)


def collate_examples(examples, ctx, multiple):
    """A micro-batch: the model's inputs, the examples' task names, and the bad records they replaced."""
    batch = collate(examples, ctx.vocab, multiple, image_size=ctx.image_size, patch_size=ctx.patch_size)
    return batch, [e.task for e in examples], sum(e.meta.get("skipped_records", 0) for e in examples)

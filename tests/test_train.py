"""Training under DeepSpeed on CPU with a micro model: loss goes down, checkpoints resume exactly,
runs export to what unio.load reads, and 2 processes (ZeRO-2, ZeRO-3) train the same model."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unio.errors import CheckpointError, RecipeError
from unio.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """\
# unio train micro.yaml
model: {preset: tiny, image_size: 32, patch_size: 8, d_model: 64, encoder_layers: 1, decoder_layers: 1, num_heads: 2}
tokenizers: tokenizers/shapes
num_bins: 100
data:
  train:
    - {source: shapes, seed: 0, image_size: 32, tasks: {caption: 1, vqa: 1, detect: 1, ground: 1, describe_region: 0.5,
       classify: 0.5, classify_region: 0.5, segment: 0.5, depth: 0.5, generate_image: 0.5, inpaint: 0.5}}
  eval: [{source: shapes, seed: 1, image_size: 32}]
  eval_tasks: [caption, vqa]
train: {steps: 8, batch_size: 8, lr: 3.0e-3, warmup: 2, log_every: 1, eval_every: 0, eval_n: 2, save_every: 4, seed: 0}
deepspeed: zero0
"""


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _tokenizers(tmp) -> Path:
    """The shipped text tokenizer and a small untrained VQ image tokenizer (16 codes per 32 px
    image), so that every task, the image-writing ones included, runs through the training loop."""
    from unio.tokenizers.image import ImageTokenizer

    tok = Path(tmp) / "tokenizers"
    if not tok.is_dir():
        tok.mkdir()
        shutil.copy(ROOT / "tokenizers" / "shapes" / "text.model", tok / "text.model")
        ImageTokenizer(image_size=32, downsample=8, stem=2, channels=(16, 16, 16)).save(tok / "image")
    return tok


def _recipe(tmp, out, *overrides):
    path = Path(tmp) / "micro.yaml"
    path.write_text(RECIPE)
    return load_recipe(path, [f"out={out}", f"tokenizers={_tokenizers(tmp)}", *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted 8-step run, and one interrupted after step 4 then resumed."""
    import torch

    from unio.training import train

    tmp = tmp_path_factory.mktemp("train")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(ROOT)
    torch.set_num_threads(1)  # a micro model gains nothing from threads, and CI machines are shared
    try:
        full = tmp / "full"
        train(_recipe(tmp, full))
        split = tmp / "split"
        train(_recipe(tmp, split), stop_after=4)
        interrupted = _records(split / "metrics.jsonl")
        train(_recipe(tmp, split), resume=True)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return {"tmp": tmp, "full": full, "split": split, "interrupted": interrupted}


def test_short_run_lowers_loss_and_writes_a_checkpoint(runs):
    run = runs["full"]
    recs = _records(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert {"loss", "lr", "samples_per_s"} <= set(recs[0]) and any(k.startswith("loss/") for k in recs[0])
    first, last = sum(r["loss"] for r in recs[:2]) / 2, sum(r["loss"] for r in recs[-2:]) / 2
    assert last < first - 0.3, (first, last)
    assert (run / "checkpoints" / "latest").read_text() == "step00000008"
    assert (run / "checkpoints" / "step00000004").is_dir() and (run / "recipe.yaml").is_file()
    assert (run / "tokenizers" / "text.model").is_file() and (run / "config.json").is_file()
    evals = _records(run / "eval.jsonl")
    assert evals[-1]["step"] == 8 and any(k.startswith("caption/") for k in evals[-1])
    assert any(k.startswith("vqa/") for k in evals[-1])


def test_tensorboard_gets_the_same_scalars(runs):
    pytest.importorskip("tensorboard")  # optional for users; the dev extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["full"] / "tb"))
    events.Reload()
    loss = events.Scalars("train/loss")
    metrics = _records(runs["full"] / "metrics.jsonl")
    assert [e.step for e in loss] == [r["step"] for r in metrics]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in metrics], rel=1e-6)
    assert "eval/caption/bleu4" in events.Tags()["scalars"]


def test_tensorboard_forgets_steps_after_the_checkpoint_on_resume(runs, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from unio.training import train

    from tensorboard.summary.writer import event_file_writer

    monkeypatch.chdir(ROOT)
    # Writers of one process number their files; 9 then 10 sorts the resumed file first by name.
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    run = tmp_path / "run"
    train(_recipe(runs["tmp"], run, "data.eval=[]"), stop_after=6)  # logged 1..6, last checkpoint at 4
    train(_recipe(runs["tmp"], run, "data.eval=[]"), resume=True)  # steps 5..8 again
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 9))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in _records(run / "metrics.jsonl")], rel=1e-6)


def test_resume_continues_step_count_data_position_and_losses(runs):
    assert [r["step"] for r in runs["interrupted"]] == [1, 2, 3, 4]
    split = _records(runs["split"] / "metrics.jsonl")
    full = _records(runs["full"] / "metrics.jsonl")
    assert [r["step"] for r in split] == list(range(1, 9))  # no step twice, none missing
    for a, b in zip(full, split):  # same samples, same optimizer state: the same losses
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert a["lr"] == pytest.approx(b["lr"])
    import torch
    states = torch.load(runs["split"] / "checkpoints" / "step00000008" / "mp_rank_00_model_states.pt",
                        weights_only=False)
    assert states["step"] == 8 and states["data"]["step"] == 8 and states["data"]["counters"] == [64]


def test_export_then_load_then_predict(runs):
    import unio
    from unio.data.shapes import ShapesWorld
    from unio.training import export

    out = export(runs["full"], runs["tmp"] / "export")
    pipe = unio.load(out)
    image = ShapesWorld(32, seed=9)[0]["image"]
    assert isinstance(pipe.caption(image), str)
    assert isinstance(pipe.ask(image, "What color is the circle?"), str)
    assert isinstance(pipe.detect(image), list)
    meta = json.loads((out / "unio.json").read_text())
    assert meta["step"] == meta["total_steps"] == 8 and "init" not in meta
    assert Path(meta["run"]) == Path(runs["full"]).resolve() and meta["recipe"].endswith("micro.yaml")
    assert pipe.ctx.vocab.num_bins == 100  # the recipe's location bins travel with the model
    # an older checkpoint on request; a missing one is a clear error
    assert json.loads((export(runs["full"], runs["tmp"] / "export4", step=4) / "unio.json").read_text())["step"] == 4
    with pytest.raises(CheckpointError, match="no checkpoint for step 5 .* available: step00000004, step00000008"):
        export(runs["full"], runs["tmp"] / "export5", step=5)
    with pytest.raises(CheckpointError, match="is not a training run directory"):
        export(runs["tmp"], runs["tmp"] / "export6")


def test_half_precision_export_loads_at_the_callers_precision(runs):
    import torch
    from safetensors import safe_open

    import unio
    from unio.data.shapes import ShapesWorld
    from unio.errors import InputError
    from unio.training import export

    full = unio.load(export(runs["full"], runs["tmp"] / "export32"))
    half_dir = export(runs["full"], runs["tmp"] / "export16", dtype="float16")
    with safe_open(half_dir / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert (half_dir / "model.safetensors").stat().st_size < 0.6 * (runs["tmp"] / "export32" / "model.safetensors").stat().st_size
    half = unio.load(half_dir)
    assert half.dtype == torch.float32  # stored in fp16, run in fp32 on a CPU
    for (name, a), b in zip(full.model.state_dict().items(), half.model.state_dict().values()):
        assert torch.equal(a.half().float(), b), name  # exactly the fp32 weights rounded once
    assert isinstance(half.caption(ShapesWorld(32, seed=9)[0]["image"]), str)
    with pytest.raises(InputError, match="export dtype 'int8' is not supported"):
        export(runs["full"], runs["tmp"] / "export8", dtype="int8")


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(runs, monkeypatch):
    from unio.training import train

    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError, match="already holds checkpoints; pass --resume"):
        train(_recipe(runs["tmp"], runs["full"]))
    with pytest.raises(CheckpointError, match="holds no complete checkpoint; start the run without --resume"):
        train(_recipe(runs["tmp"], runs["tmp"] / "fresh"), resume=True)


def test_a_kill_during_save_keeps_the_last_good_checkpoint(runs, tmp_path):
    from unio.training.checkpoint import latest_tag, save

    ckpt = tmp_path / "checkpoints"
    shutil.copytree(runs["full"] / "checkpoints", ckpt)

    class DiesWhileSaving:
        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            (Path(save_dir) / tag).mkdir(parents=True)
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"half a file")
            raise KeyboardInterrupt  # the process is stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        save(DiesWhileSaving(), ckpt, 12, {}, rank=0, keep=2)
    assert latest_tag(ckpt) == "step00000008" and not (ckpt / "step00000012").exists()

    class Saves:
        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            (Path(save_dir) / tag).mkdir(parents=True)
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"complete")

    assert save(Saves(), ckpt, 12, {}, rank=0, keep=2) == "step00000012"
    assert latest_tag(ckpt) == "step00000012"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith(("step", ".tmp"))) == \
        ["step00000008", "step00000012"]  # the partial save is gone, older ones pruned


def test_bad_record_stops_the_run_with_file_and_line(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from unio.cli import main

    monkeypatch.chdir(ROOT)
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "train.jsonl").write_text('{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": 3}\n')
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(RECIPE)
    args = ["train", str(recipe), "--set", f"out={tmp_path}/run", "--set",
            f"data.train=[{{source: jsonl, path: {tmp_path}/train.jsonl, tasks: {{caption: 1}}}}]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.jsonl line 2: caption must be a string" in err and "on_bad_record: skip" in err


def test_skipped_records_are_counted_across_loader_workers_and_resumes(tmp_path, monkeypatch):
    """A record whose image turns out unreadable only when it is loaded (in a DataLoader worker) is
    replaced, and the count reaches metrics.jsonl and survives a resume."""
    import numpy as np
    from PIL import Image

    from unio.training import train

    monkeypatch.chdir(ROOT)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"image": f"{n}.png", "caption": f"picture {n}"}) + "\n" for n in ("a", "bad", "b")))
    sets = [f"data.train=[{{source: jsonl, path: {tmp_path}/train.jsonl, tasks: {{caption: 1}}}}]",
            "data.on_bad_record=skip", "data.num_workers=1", "data.eval=[]", "train.save_every=2"]
    run = tmp_path / "run"
    train(_recipe(tmp_path, run, *sets), stop_after=2)
    first = _records(run / "metrics.jsonl")[-1]["records_skipped"]
    assert first >= 1
    train(_recipe(tmp_path, run, *sets, "train.steps=4"), resume=True)
    recs = _records(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["records_skipped"] > first


def _torchrun(tmp_path, tokenizers, stage):
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / f"run-{stage}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "unio", "train", str(recipe), "--set", f"out={out}", "--set", f"deepspeed={stage}",
           "--set", f"tokenizers={tokenizers}",
           "--set", "train.steps=3", "--set", "train.save_every=0"]
    if stage != "zero3":  # ZeRO-3 evaluates too: its weights are gathered from both ranks first
        cmd += ["--set", "data.eval=[]"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_cpu_processes(runs, tmp_path, stage):
    """torchrun, 2 processes (gloo): completes, checkpoints every rank's shard, and its first steps
    match the one-process run of the same recipe (the same global batch, normalised the same way)."""
    out = _torchrun(tmp_path, _tokenizers(runs["tmp"]), stage)
    recs = _records(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3]
    full = _records(runs["full"] / "metrics.jsonl")
    for a, b in zip(full[:3], recs):  # warmup steps: the same schedule in both runs
        assert abs(a["loss"] - b["loss"]) < 1e-3, (a["loss"], b["loss"])
    tag = (out / "checkpoints" / "latest").read_text()
    assert {f"rng_rank{r}.pt" for r in (0, 1)} <= {p.name for p in (out / "checkpoints" / tag).iterdir()}
    if stage == "zero3":
        assert {"caption/bleu4", "vqa/exact_match"} <= set(_records(out / "eval.jsonl")[-1])
        from unio.training import export
        assert (export(out, tmp_path / "export") / "model.safetensors").is_file()


@pytest.mark.slow
def test_resume_on_another_number_of_processes(runs, tmp_path, monkeypatch):
    """A one-process ZeRO-0 checkpoint resumes on two processes with the same losses (the data position
    is global); a ZeRO-2 one, whose optimizer state is split per process, is refused with a way out."""
    from unio.training import train

    run = tmp_path / "moved"
    shutil.copytree(runs["full"], run)
    shutil.rmtree(run / "checkpoints" / "step00000008")
    (run / "checkpoints" / "latest").write_text("step00000004")
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(RECIPE)
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unio",
            "train", str(recipe), "--resume", "--set", f"tokenizers={_tokenizers(runs['tmp'])}", "--set", "data.eval=[]"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*base, "--set", f"out={run}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full, moved = _records(runs["full"] / "metrics.jsonl"), _records(run / "metrics.jsonl")
    assert [r["step"] for r in moved] == list(range(1, 9))
    for a, b in zip(full[4:], moved[4:]):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])

    monkeypatch.chdir(ROOT)
    train(_recipe(tmp_path, tmp_path / "z2", "deepspeed=zero2", "data.eval=[]"), stop_after=4)
    proc = subprocess.run([*base, "--set", f"out={tmp_path / 'z2'}", "--set", "deepspeed=zero2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0  # torchrun reports its children's exit status 2 as a failure
    assert "written by 1 process(es) with ZeRO stage 2, and this run has 2" in proc.stderr
    assert "--set model.init=EXPORT_DIR" in proc.stderr and "[rank0]: Traceback" not in proc.stderr


def test_recipe_trains_its_text_tokenizer_on_its_data(tmp_path, monkeypatch):
    from PIL import Image

    from unio.tokenizers.text import TextTokenizer
    from unio.training.prepare import train_text_tokenizer

    monkeypatch.chdir(ROOT)
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    lines = [{"image": "a.png", "caption": f"a zebrafish number {i} swims", "question": "what swims?",
              "answer": "zebrafish"} for i in range(300)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    (tmp_path / "micro.yaml").write_text(RECIPE)
    recipe = load_recipe(tmp_path / "micro.yaml", [
        f"data.train=[{{source: jsonl, path: {tmp_path}/t.jsonl, tasks: {{caption: 1, vqa: 1}}}}]",
        "text_tokenizer.train=true", "text_tokenizer.vocab_size=600"])
    train_text_tokenizer(recipe, tmp_path / "text.model")
    tok = TextTokenizer.load(tmp_path / "text.model")
    assert tok.vocab_size == 600 and tok.decode(tok.encode("a zebrafish swims")) == "a zebrafish swims"
    assert len(tok.encode("zebrafish")) <= 2  # learnt from the data, not bytes


def test_finetune_an_export_on_a_jsonl_manifest(tmp_path, monkeypatch):
    """The user story: start from an export directory, train on one's own files, export again."""
    import torch
    from PIL import Image

    import unio
    from unio.export import init_export
    from unio.training import export, train

    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    init = init_export("tiny", tokenizers="tokenizers/shapes", out=tmp_path / "init", image_size=32, patch_size=8,
                       quiet=True, d_model=64, encoder_layers=1, decoder_layers=1, num_heads=2)
    records = []
    for i in range(6):
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(tmp_path / f"{i}.png")
        records.append({"image": f"{i}.png", "caption": f"a blue picture number {i}",
                        "objects": [{"box": [2, 3, 20, 25], "label": "panel"}]})
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "ft.yaml").write_text(f"""\
model: {{init: {init}, dropout: 0.1}}
data:
  train: [{{source: jsonl, path: {tmp_path}/mine.jsonl, tasks: {{caption: 1, detect: 1}}}}]
train: {{steps: 3, batch_size: 4, lr: 1.0e-3, warmup: 1, log_every: 1, save_every: 0}}
out: {tmp_path}/run
""")
    try:
        train(load_recipe(tmp_path / "ft.yaml"))
    finally:
        torch.set_num_threads(threads)
    pipe = unio.load(export(tmp_path / "run", tmp_path / "export"))
    assert pipe.model.config.d_model == 64 and pipe.model.config.dropout == 0.1
    assert pipe.ctx.vocab.fingerprint == unio.load(init).ctx.vocab.fingerprint
    assert "panel" in pipe.classes["object"]  # the new label joins the ones the model knew
    meta = json.loads((tmp_path / "export" / "unio.json").read_text())  # the lineage travels with the export
    assert meta["init"] == str(init) and meta["step"] == meta["total_steps"] == 3
    (tmp_path / "run2").mkdir()
    shutil.copytree(tmp_path / "run", tmp_path / "run2", dirs_exist_ok=True)
    assert json.loads((tmp_path / "run" / "init.json").read_text())["total_steps"] == 0  # unio init: untrained
    (tmp_path / "run2" / "init.json").unlink()  # a run without the record: the init export is read at export
    recipe_file = tmp_path / "run2" / "recipe.yaml"
    recipe_file.write_text(recipe_file.read_text().replace(str(init), str(tmp_path / "export")))
    meta2 = json.loads((export(tmp_path / "run2", tmp_path / "export2") / "unio.json").read_text())
    assert meta2["total_steps"] == 6 and meta2["run"] == str((tmp_path / "run2").resolve())
    shutil.rmtree(init)  # the record written when the run started outlives the init export
    assert json.loads((export(tmp_path / "run", tmp_path / "export3") / "unio.json").read_text())["total_steps"] == 3
    shutil.rmtree(tmp_path / "export")  # run2's init is gone and it has no record: the lineage is unknown,
    meta4 = json.loads((export(tmp_path / "run2", tmp_path / "export4") / "unio.json").read_text())
    assert "total_steps" not in meta4
    shutil.copytree(tmp_path / "run", tmp_path / "run5")  # and an init whose own lineage is unknown gives none
    (tmp_path / "run5" / "init.json").unlink()
    recipe_file = tmp_path / "run5" / "recipe.yaml"
    recipe_file.write_text(recipe_file.read_text().replace(str(init), str(tmp_path / "export4")))
    assert "total_steps" not in json.loads((export(tmp_path / "run5", tmp_path / "export5") / "unio.json").read_text())
    assert isinstance(pipe.caption(tmp_path / "0.png"), str)


def test_deepspeed_config_is_filled_from_the_recipe(tmp_path, monkeypatch):
    from unio.training import build_ds_config

    monkeypatch.chdir(ROOT)
    cfg = build_ds_config(_recipe(tmp_path, tmp_path / "r", "deepspeed=zero3-offload", "train.micro_batch_size=2"),
                          world_size=2, use_cuda=False)
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (8, 2, 2)
    assert cfg["gradient_clipping"] == 1.0 and cfg["bf16"]["enabled"] is False
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(RecipeError, match="batch_size 8 must be a multiple of train.micro_batch_size 3 x 2"):
        build_ds_config(_recipe(tmp_path, tmp_path / "r", "train.micro_batch_size=3"), world_size=2, use_cuda=False)
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 1}}))
    with pytest.raises(RecipeError, match="sets train_batch_size=32 but the recipe implies 8"):
        build_ds_config(_recipe(tmp_path, tmp_path / "r", f"deepspeed={fixed}"), world_size=1, use_cuda=False)
    sched = tmp_path / "sched.json"
    sched.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(RecipeError, match="has a scheduler section"):
        build_ds_config(_recipe(tmp_path, tmp_path / "r", f"deepspeed={sched}"), world_size=1, use_cuda=False)

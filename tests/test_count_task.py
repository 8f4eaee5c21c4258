"""A task added from outside the package (tests/plugins/unio_count_task.py, README "Adding a task"):
found through the ``unio.tasks`` entry point, it runs through ``pipe.run``, ``unio predict``,
``unio eval`` and a training recipe's task mixture without a line of unio changed."""
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

import unio
import unio.tasks.registry as registry
from unio.cli import main as cli
from unio.data.shapes import ShapesWorld

PLUGINS = Path(__file__).parent / "plugins"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def count_installed():
    """As if ``pip install`` had put the plugin package (module + dist-info) on the path."""
    sys.path.insert(0, str(PLUGINS))
    registry._plugins_loaded = False
    yield
    sys.path.remove(str(PLUGINS))
    registry.TASKS.pop("count", None)
    sys.modules.pop("unio_count_task", None)
    registry._plugins_loaded = False


def test_the_entry_point_registers_the_task(count_installed):
    task = unio.tasks.get_task("count")
    assert type(task).__module__ == "unio_count_task" and "count" in unio.tasks.task_names()
    assert task.check_options({"num_beams": 2}) == {"num_beams": 2}  # generate options come with every task


def test_pipe_run_and_unio_predict(count_installed, micro_export, tmp_path, capsys):
    pipe = unio.load(micro_export, device="cpu")
    image = ShapesWorld(seed=3)[0]["image"]
    got = pipe.run("count", [image, image], max_new_tokens=2)
    assert len(got) == 2 and all(g is None or isinstance(g, int) for g in got)  # untrained: a number or None
    image.save(tmp_path / "a.png")
    assert cli(["predict", "count", "--model", str(micro_export), str(tmp_path / "a.png"),
                "--out", str(tmp_path / "p.jsonl"), "--viz", str(tmp_path / "viz")]) == 0
    rec = json.loads((tmp_path / "p.jsonl").read_text())
    assert rec["task"] == "count" and "count" in rec and Image.open(rec["viz_png"]).width > 0
    assert cli(["predict", "count", "--model", str(micro_export), str(tmp_path / "a.png"), "--text", "x"]) == 2
    assert "takes no --text" in capsys.readouterr().err


def test_unio_eval(count_installed, micro_export, tmp_path):
    out = tmp_path / "m.json"
    assert cli(["eval", "--model", str(micro_export), "--data", "shapes:1", "--tasks", "count", "--n", "3",
                "--out", str(out), "--predictions", str(tmp_path / "p.jsonl")]) == 0
    metrics = json.loads(out.read_text())["count"]
    assert metrics["n"] == 3 and 0 <= metrics["exact_match"] <= 1
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["truth"] for r in records] == [len(ShapesWorld(seed=1)[r["sample"]]["objects"]) for r in records]


def test_a_recipe_trains_it_and_the_export_keeps_its_prompts(count_installed, tmp_path):
    import torch

    from unio.recipe import load_recipe
    from unio.training import export, train
    recipe = tmp_path / "count.yaml"
    recipe.write_text(
        "# unio train count.yaml\n"
        "model: {preset: tiny, image_size: 32, patch_size: 8, d_model: 64, encoder_layers: 1, decoder_layers: 1, "
        "num_heads: 2}\n"
        "tokenizers: tokenizers/shapes\n"
        "data:\n"
        "  train: [{source: shapes, seed: 0, image_size: 32, tasks: {count: 2, caption: 1}}]\n"
        "  eval: [{source: shapes, seed: 1, image_size: 32}]\n"
        "  eval_tasks: [count]\n"
        "train: {steps: 4, batch_size: 4, lr: 3.0e-3, warmup: 1, log_every: 1, eval_every: 4, eval_n: 2, "
        "save_every: 4, seed: 0}\n"
        "deepspeed: zero0\n")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    try:
        train(load_recipe(recipe, [f"out={tmp_path / 'run'}"]))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("count" in json.dumps(r) for r in logged)  # its loss / eval figure is logged by name
    pipe = unio.load(export(tmp_path / "run", tmp_path / "export"), device="cpu")
    assert "count" in pipe.tasks  # the export carries the task's own templates
    assert pipe.ctx.prompts.canonical("count") == "How many objects are there?"


def test_the_readme_shows_this_task_as_it_is():
    """The README's "Adding a task" snippet is the plugin's class (its statements, comments aside)."""
    import ast
    import re
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a task"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shown = next(n for n in ast.parse(snippet).body if isinstance(n, ast.ClassDef))
    real = next(n for n in ast.parse((PLUGINS / "unio_count_task.py").read_text()).body
                if isinstance(n, ast.ClassDef) and n.name == shown.name)
    statements = {ast.dump(s) for s in real.body}
    assert [ast.dump(s) in statements for s in shown.body] == [True] * len(shown.body)
    assert [ast.dump(d) for d in shown.decorator_list] == [ast.dump(d) for d in real.decorator_list]

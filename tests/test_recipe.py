"""Recipes: the shipped ones load, overrides are typed, and every mistake is a clear RecipeError."""
from pathlib import Path

import pytest
import yaml

from unio.errors import RecipeError
from unio.recipe import load_recipe, save_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def _recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


MINIMAL = """\
# unio train r.yaml
data:
  train: [{source: shapes, tasks: {caption: 1}}]
"""


@pytest.mark.parametrize("name", ["shapes-tiny", "shapes-small", "coco-base", "finetune-custom"])
def test_shipped_recipes_start_with_their_command(name):
    first = (RECIPES / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and "unio train" in first and f"recipes/{name}.yaml" in first


@pytest.mark.parametrize("name", ["shapes-tiny", "shapes-small"])
def test_shapes_recipes_resolve(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = load_recipe(RECIPES / f"{name}.yaml")
    assert Path(r["deepspeed"]).is_file() and Path(r["tokenizers"], "text.model").is_file()
    assert Path(r["out"]).is_absolute()


def test_real_data_templates_name_the_missing_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"data.train\[0\].images: folder data/coco/train2017 does not exist"):
        load_recipe(RECIPES / "coco-base.yaml")
    (tmp_path / "my_model").mkdir()
    with pytest.raises(RecipeError, match=r"data.train\[0\].path: file my_data/train.jsonl does not exist"):
        load_recipe(RECIPES / "finetune-custom.yaml")


def test_deepspeed_configs_exist_for_every_stage():
    import json
    for name in ("zero0", "zero1", "zero2", "zero3", "zero3-offload"):
        cfg = json.loads((RECIPES / "deepspeed" / f"{name}.json").read_text())
        assert cfg["train_batch_size"] == "auto" and "stage" in cfg["zero_optimization"]


def test_overrides_are_coerced(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = load_recipe(_recipe(tmp_path, MINIMAL), [
        "train.steps=20", "train.lr=1e-3", "train.activation_checkpointing=yes", "train.betas=[0.9, 0.95]",
        "model.d_model=64", "model.dropout=0", "data.train.0.seed=5", "data.train.0.tasks.vqa=2",
        "deepspeed=zero2", f"out={tmp_path}/run", "data.eval_tasks=caption,vqa"])
    t = r["train"]
    assert t["steps"] == 20 and t["lr"] == 1e-3 and isinstance(t["lr"], float)
    assert t["activation_checkpointing"] is True and t["betas"] == [0.9, 0.95]
    assert r["model"]["d_model"] == 64 and r["model"]["dropout"] == 0.0 and isinstance(r["model"]["dropout"], float)
    assert r["data"]["train"][0]["seed"] == 5 and r["data"]["train"][0]["tasks"] == {"caption": 1.0, "vqa": 2.0}
    assert r["deepspeed"].endswith("recipes/deepspeed/zero2.json") and r["out"] == f"{tmp_path}/run"
    assert r["data"]["eval_tasks"] == ["caption", "vqa"]
    assert r["train"]["batch_size"] == 64  # defaults filled


@pytest.mark.parametrize("override, message", [
    ("train.step=3", r"unknown recipe key train.step; did you mean train.steps\?"),
    ("trian.steps=3", r"unknown recipe key trian; did you mean train\?"),
    ("train.steps=many", r"train.steps must be an integer, got 'many'"),
    ("train.steps=2.5", r"train.steps must be an integer"),
    ("train.lr=fast", r"train.lr must be a number"),
    ("train.activation_checkpointing=maybe", "must be true or false"),
    ("train.precision=fp8", r"train.precision must be auto, fp32 or bf16"),
    ("model.widthh=3", r"unknown recipe key model.widthh"),
    ("model.preset=huge", r"model.preset 'huge' is unknown"),
    ("model.image_size=60", r"must be a multiple of model.patch_size"),
    ("data.train.3.seed=1", r"data.train has 1 entries"),
    ("data.train.0.tasks.captoin=1", r"unknown task 'captoin' \(did you mean 'caption'\?\)"),
    ("data.train.0.imgs=x", r"unknown recipe key data.train\[0\].imgs"),
    ("data.train.0.source=flickr", r"data.train\[0\].source: unknown data source 'flickr'"),
    ("data.on_bad_record=ignore", r"on_bad_record must be 'error' or 'skip'"),
    ("deepspeed=zero9", r"deepspeed: file recipes/deepspeed/zero9.json does not exist"),
    ("tokenizers=/nonexistent/tok", r"tokenizers: folder /nonexistent/tok does not exist"),
    ("train.steps", r"must look like key=value"),
    ("train=3", r"train is a section"),
])
def test_bad_overrides(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError, match=message):
        load_recipe(_recipe(tmp_path, MINIMAL), [override])


@pytest.mark.parametrize("text, message", [
    ("model: {preset: tiny\ndata: [", r"r.yaml line \d+ column \d+: not valid YAML"),
    ("- a\n- b\n", "must be a mapping of keys"),
    ("train: 3\n" + MINIMAL, "train must be a mapping"),
    ("model: {preset: tiny}\n", "data.train must list at least one source"),
    ("data:\n  train: [{source: shapes}]\n", r"data.train\[0\].tasks must map task names to weights"),
    ("data:\n  train: [{source: jsonl, tasks: {caption: 1}}]\n", r"data.train\[0\].path is required"),
    ("data:\n  train: [{source: jsonl, path: nope.jsonl, tasks: {caption: 1}}]\n",
     r"data.train\[0\].path: file nope.jsonl does not exist"),
    ("data:\n  train: [{source: shapes, tasks: {caption: -1}}]\n", "weights must be >= 0"),
    (MINIMAL + "extra: 1\n", "unknown recipe key extra"),
])
def test_malformed_recipes(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError, match=message):
        load_recipe(_recipe(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe .*nothing.yaml does not exist"):
        load_recipe(tmp_path / "nothing.yaml")


def test_resolved_recipe_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = load_recipe(_recipe(tmp_path, MINIMAL), ["train.steps=7"])
    out = tmp_path / "resolved.yaml"
    save_recipe(r, out, command="unio train r.yaml --set train.steps=7")
    assert out.read_text().startswith("# unio train r.yaml --set train.steps=7\n")
    again = load_recipe(out)
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    assert strip(again) == strip(r)
    assert yaml.safe_load(out.read_text())["train"]["steps"] == 7


def test_cli_prints_recipe_errors(tmp_path, monkeypatch, capsys):
    from unio.cli import main
    monkeypatch.chdir(ROOT)
    assert main(["train", str(_recipe(tmp_path, MINIMAL)), "--set", "train.stepz=1"]) == 2
    err = capsys.readouterr().err
    assert "unio train: error: unknown recipe key train.stepz" in err and "Traceback" not in err


def test_section_override_merges_into_the_section(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    r = load_recipe(_recipe(tmp_path, MINIMAL + "train: {batch_size: 16}\n"), ["train={steps: 5}", "model={d_model: 64}"])
    assert r["train"]["steps"] == 5 and r["train"]["batch_size"] == 16 and r["model"]["preset"] == "tiny"
    with pytest.raises(RecipeError, match="unknown recipe key train.stepz"):
        load_recipe(_recipe(tmp_path, MINIMAL), ["train={stepz: 5}"])


def test_a_shipped_model_name_is_a_model_init(tmp_path, monkeypatch):
    """`--set model.init=shapes-demo` starts from the shipped model, as `--model shapes-demo` does elsewhere."""
    from unio.export import export_path

    monkeypatch.chdir(tmp_path)  # found wherever the run starts, not only next to the models/ folder
    r = load_recipe(_recipe(tmp_path, MINIMAL), ["model.init=shapes-demo"])
    assert Path(r["model"]["init"]) == export_path("shapes-demo").resolve()
    assert (Path(r["model"]["init"]) / "unio.json").is_file()
    (tmp_path / "mine").mkdir()  # a folder of that name here is what the user means
    assert load_recipe(_recipe(tmp_path, MINIMAL), ["model.init=mine"])["model"]["init"] == str(tmp_path / "mine")
    with pytest.raises(RecipeError, match="model.init: 'no-such-model' is neither an export directory nor a shipped"):
        load_recipe(_recipe(tmp_path, MINIMAL), ["model.init=no-such-model"])

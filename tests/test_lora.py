"""LoRA fine-tuning (train.lora): only the adapters train under DeepSpeed, runs resume, and both
export modes (merged weights, adapters over the base) load through unio.load and answer as the
adapted model in memory does."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

import unio  # noqa: E402
from unio.errors import CheckpointError, InputError, RecipeError, UnioError, VocabMismatchError  # noqa: E402
from unio.export import init_export, load_export, save_export  # noqa: E402
from unio.model import UnioForConditionalGeneration  # noqa: E402
from unio.model.lora import add_lora, match_targets, merge_lora, require_peft  # noqa: E402
from unio.pipeline import Pipeline  # noqa: E402
from unio.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MICRO = dict(d_model=64, encoder_layers=1, decoder_layers=1, num_heads=2)
RECIPE = """\
model: {{init: {init}}}
data:
  train: [{{source: shapes, seed: 0, image_size: 32, tasks: {{caption: 1, vqa: 1, classify: 1}}}}]
  eval: [{{source: shapes, seed: 1, image_size: 32}}]
  eval_tasks: [classify]
train: {{steps: 4, batch_size: 4, lr: 2.0e-2, warmup: 0, log_every: 1, save_every: 2, eval_every: 0, eval_n: 2, seed: 0,
        lora: {{r: 4, alpha: 8, export: adapters}}}}
out: {out}
"""


def _init(tmp: Path, name="init", seed=0, num_bins=1000) -> Path:
    """An untrained micro export with the shipped text tokenizer and no image tokenizer."""
    tok = tmp / "tok"
    if not tok.is_dir():
        tok.mkdir()
        shutil.copy(ROOT / "tokenizers" / "shapes" / "text.model", tok / "text.model")
    return init_export("tiny", tokenizers=tok, out=tmp / name, image_size=32, patch_size=8, seed=seed,
                       num_bins=num_bins, quiet=True, classes={"image": ["circle", "square"]}, **MICRO)


def _recipe(tmp: Path, out: Path, *overrides):
    path = tmp / "lora.yaml"
    path.write_text(RECIPE.format(init=tmp / "init", out=out))
    return load_recipe(path, list(overrides))


def _state(run: Path) -> dict:
    from unio.training.checkpoint import consolidated_state_dict, latest_tag
    return consolidated_state_dict(run / "checkpoints", latest_tag(run / "checkpoints"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-step LoRA run, and the same run stopped after step 2 and resumed; both exports."""
    from unio.training import export, train

    tmp = tmp_path_factory.mktemp("lora")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    try:
        _init(tmp)
        train(_recipe(tmp, tmp / "full"))
        train(_recipe(tmp, tmp / "split"), stop_after=2)
        train(_recipe(tmp, tmp / "split"), resume=True)
        adapters = export(tmp / "full", tmp / "adapters")  # the recipe's export: adapters
        merged = export(tmp / "full", tmp / "merged", lora="merged")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return {"tmp": tmp, "init": tmp / "init", "full": tmp / "full", "split": tmp / "split",
            "adapters": adapters, "merged": merged}


def _adapted_in_memory(runs):
    """The adapted model as training left it: the base, the same adapters, the checkpoint's weights."""
    model = UnioForConditionalGeneration.from_pretrained(runs["init"], dtype=torch.float32)
    add_lora(model, r=4, alpha=8)
    missing, unexpected = model.load_state_dict(_state(runs["full"]), strict=False)
    assert not unexpected and all(k.endswith("embed_tokens.weight") for k in missing)
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.rand(2, 3, 32, 32, generator=g), "input_ids": torch.randint(4, 400, (2, 6), generator=g),
            "decoder_input_ids": torch.randint(4, 400, (2, 5), generator=g)}


@torch.no_grad()
def _logits(model):
    out = model(**_inputs()).logits
    return out[..., : model.config.used_vocab_size]


def test_only_adapter_weights_train_and_the_optimizer_sees_only_them(runs):
    base = load_export(runs["init"], dtype=torch.float32)[0].state_dict()
    state = _state(runs["full"])
    lora = [k for k in state if ".lora_" in k]
    assert lora and all(".lora_A." in k or ".lora_B." in k for k in lora)
    for k, v in state.items():
        if ".lora_" not in k:  # every base weight is exactly the init's
            assert torch.equal(v, base[k.replace(".base_layer.", ".")]), k
    assert all(state[k].abs().sum() > 0 for k in lora if ".lora_B." in k)  # B starts at zero: it trained
    evaluated = json.loads((runs["full"] / "eval.jsonl").read_text().splitlines()[-1])  # the adapted model evaluates
    assert evaluated["step"] == 4 and 0 <= evaluated["classify/accuracy"] <= 1
    blob = torch.load(next((runs["full"] / "checkpoints" / "step00000004").glob("mp_rank_*_model_states.pt")),
                      map_location="cpu", weights_only=False)
    moments = blob["optimizer"]["state"]
    assert len(moments) == len(lora)
    assert sum(m["exp_avg"].numel() for m in moments.values()) == sum(state[k].numel() for k in lora)


def test_a_resumed_lora_run_matches_the_uninterrupted_one(runs):
    losses = {name: [json.loads(line)["loss"] for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
              for name in ("full", "split")}
    assert len(losses["split"]) == 4
    assert losses["split"] == pytest.approx(losses["full"], abs=1e-5)
    full, split = _state(runs["full"]), _state(runs["split"])
    assert all(torch.allclose(full[k], split[k], atol=1e-6) for k in full if ".lora_" in k)


def test_both_exports_load_and_answer_as_the_adapted_model(runs, tmp_path):
    memory = _adapted_in_memory(runs)
    merged, adapters, base = unio.load(runs["merged"]), unio.load(runs["adapters"]), unio.load(runs["init"])
    # merged: a normal export directory; adapters: no network, the base named in unio.json
    assert {"config.json", "model.safetensors", "text.model"} <= {p.name for p in runs["merged"].iterdir()}
    assert {p.name for p in runs["adapters"].iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                            "prompts", "unio.json"}
    meta = json.loads((runs["adapters"] / "unio.json").read_text())
    assert meta["kind"] == "adapters" and meta["base"]["path"] == str(runs["init"]) and meta["lora"]["r"] == 4
    assert json.loads((runs["merged"] / "unio.json").read_text())["lora"]["export"] == "merged"
    want = _logits(memory)
    for pipe in (merged, adapters):
        assert type(pipe.model) is UnioForConditionalGeneration
        assert torch.allclose(_logits(pipe.model), want, atol=1e-5)
    assert torch.allclose(_logits(merged.model), _logits(adapters.model), atol=1e-5)
    assert not torch.allclose(_logits(base.model), want, atol=1e-3)  # the adapters changed the answers
    from unio.data.shapes import ShapesWorld
    images = [ShapesWorld(image_size=32, seed=7)[i]["image"] for i in range(3)]
    in_memory = Pipeline(memory, merged.ctx).caption(images)
    assert merged.caption(images) == adapters.caption(images) == in_memory
    assert merged.classify(images) == adapters.classify(images)
    with pytest.raises(InputError, match="merge them into its weights first"):
        save_export(tmp_path / "unmerged", memory, merged.ctx)
    merge_lora(memory)  # folding the adapters in keeps the answers
    assert torch.allclose(_logits(memory), want, atol=1e-5)


def test_adapters_refuse_a_missing_or_different_base(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["adapters"], moved)
    meta = json.loads((moved / "unio.json").read_text())
    meta["base"]["path"] = str(tmp_path / "gone")
    (moved / "unio.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be found.*gone"):
        unio.load(moved)
    shutil.copytree(runs["init"], tmp_path / "init")  # the base next to the adapters: found by its relative path
    assert unio.load(moved).meta["base"]["path"] == str(moved / ".." / "init")
    other = _init(tmp_path, "other-bins", num_bins=100)  # other tokenizers: other vocabulary
    with pytest.raises(VocabMismatchError, match="number of location bins: 1000 here vs 100"):
        load_export(moved, base=other)
    reseeded = _init(tmp_path, "reseeded", seed=1)  # same tokenizers, other weights
    with pytest.raises(CheckpointError, match="not the one the adapters .* were trained on"):
        load_export(moved, base=reseeded)
    with pytest.raises(RecipeError, match="holds LoRA adapters, not a whole model"):
        _recipe(runs["tmp"], tmp_path / "r", f"model.init={moved}")


def test_targets_that_match_nothing_list_the_layers(runs):
    model = UnioForConditionalGeneration.from_pretrained(runs["init"])
    assert match_targets(model, ["cross_attn", "decoder.*.qkv"]) == [
        "decoder.layers.0.self_attn.qkv", "decoder.layers.0.cross_attn.q", "decoder.layers.0.cross_attn.kv",
        "decoder.layers.0.cross_attn.out"]
    with pytest.raises(InputError) as err:
        add_lora(model, targets=["qkv", "v_proj"])
    message = str(err.value)
    assert "['v_proj']" in message and "gate_up" in message and "decoder.layers.N.cross_attn.kv (1)" in message
    assert not any(".lora_" in k for k in model.state_dict())  # nothing was put in


@pytest.mark.parametrize("override, message", [
    ("train.lora.r=0", "train.lora.r must be an integer >= 1"),
    ("train.lora.rank=8", r"unknown recipe key train.lora.rank; known keys here: \[.alpha., .dropout., .export., .r., .targets.\]"),
    ("train.lora.alpha=0", "train.lora.alpha must be > 0"),
    ("train.lora.dropout=1.5", r"train.lora.dropout must be in \[0, 1\)"),
    ("train.lora.export=lora", "train.lora.export must be merged or adapters"),
    ("train.lora.targets=[]", "train.lora.targets must list module-name patterns"),
    ("train.lora=8", "train.lora must be a mapping"),
])
def test_bad_lora_values_are_refused(runs, tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(runs["tmp"], tmp_path / "r", override)


def test_lora_recipe_keys(runs, tmp_path, monkeypatch):
    recipe = _recipe(runs["tmp"], tmp_path / "r", "train.lora=null", "train.lora.r=8")  # one key switches it on
    assert recipe["train"]["lora"] == {"r": 8, "alpha": 32.0, "targets": ["qkv", "q", "kv", "out", "gate_up", "down"],
                                       "dropout": 0.0, "export": "merged"}
    assert _recipe(runs["tmp"], tmp_path / "r", "train.lora=false")["train"]["lora"] is None
    monkeypatch.chdir(ROOT)
    with pytest.raises(RecipeError, match="train.lora adapts an existing model: set model.init"):
        load_recipe("recipes/shapes-tiny.yaml", ["train.lora=true"])


def test_without_peft_the_error_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(UnioError, match=r'pip install "unio\[lora\]"'):
        require_peft()
    with pytest.raises(UnioError, match=r'pip install "unio\[lora\]"'):
        _recipe(runs["tmp"], tmp_path / "r")
    with pytest.raises(UnioError, match=r'pip install "unio\[lora\]"'):
        unio.load(runs["adapters"])
    assert unio.load(runs["merged"]).model is not None  # a merged export needs no peft


def test_the_shipped_lora_recipe(monkeypatch):
    path = ROOT / "recipes" / "lora-fashion-mnist.yaml"
    assert path.read_text().splitlines()[0] == "# unio train recipes/lora-fashion-mnist.yaml"
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(path)
    assert recipe["train"]["lora"]["export"] == "adapters" and Path(recipe["model"]["init"]).name == "shapes-demo"

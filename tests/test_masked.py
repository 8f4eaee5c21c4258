"""masked_image: the target is the image's VQ codes, only the hidden cells weigh, the mask is
BEiT's blockwise one and fixed at inference, parsing never raises, the metric scores hand-made
cases, and a recipe that names only a folder of pictures trains."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unio.data.formats import open_source
from unio.data.shapes import ShapesWorld
from unio.data.specs import parse_data_spec
from unio.errors import DataError, TaskError
from unio.recipe import load_recipe
from unio.tasks import TaskContext, get_task
from unio.tasks.masked import (ForcedCodesProcessor, MaskedCodes, MaskedImage, block_mask, cell_pixels, code_cells,
                               example_scores)
from conftest import shipped_tokenizers

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ctx():
    return TaskContext.from_dir(shipped_tokenizers(), image_size=64, patch_size=8)


@pytest.fixture(scope="module")
def task():
    return get_task(MaskedImage.name)


@pytest.fixture(scope="module")
def sample():
    return ShapesWorld(64, seed=0)[3]


def test_build_parse_round_trip(ctx, task, sample):
    ex = task.build(sample, ctx)
    n = ctx.image_codes
    assert len(ex.labels) == n + 1 and ex.labels[-1] == ctx.vocab.eos_id
    assert all(k == 2 for k in ctx.vocab.kinds(ex.labels[:-1]).tolist())  # image codes only
    result = task.parse(ex.labels, ctx, ex.info, meta=ex.meta)
    assert isinstance(result, MaskedCodes)
    assert np.array_equal(result.codes, ex.meta["codes"]) and result.picture.size == (64, 64)
    assert np.array_equal(result.masked, ex.meta["masked"])
    json.dumps(result.to_dict())


def test_weights_are_zero_exactly_on_visible_cells(ctx, task, sample):
    ex = task.build(sample, ctx, np.random.default_rng(7))
    cells = ex.meta["masked"]
    weights = np.asarray(ex.label_weights)
    assert weights[-1] == 0  # eos
    assert np.array_equal(weights[:-1] == 0, ~cells.reshape(-1))
    assert np.array_equal(cells, code_cells(ex.patch_mask, ctx.image_tokenizer.grid_size))
    G = ctx.patch_grid
    assert ex.patch_mask.shape == (G, G) and ex.patch_mask.sum() == round(0.4 * G * G)


def test_code_cells_map_grids_of_other_sizes():
    coarse = np.zeros((4, 4), dtype=bool)
    coarse[1, 2] = True  # one patch covers 2 x 2 code cells of an 8 x 8 grid
    cells = code_cells(coarse, 8)
    assert cells.sum() == 4 and cells[2:4, 4:6].all()
    fine = np.zeros((16, 16), dtype=bool)
    fine[5, 9] = True  # a code cell covers 2 x 2 patches: hidden when any of them is
    cells = code_cells(fine, 8)
    assert cells.sum() == 1 and cells[2, 4]
    assert code_cells(np.zeros((6, 6), bool), 4).sum() == 0 and code_cells(np.ones((6, 6), bool), 4).all()


def test_mask_is_fixed_for_a_seed_and_blockwise(ctx, task, sample):
    a, b = task.build(sample, ctx), task.build(sample, ctx)
    assert np.array_equal(a.patch_mask, b.patch_mask) and np.array_equal(a.label_weights, b.label_weights)
    other = task.build(sample, ctx, mask_seed=3)
    assert not np.array_equal(a.patch_mask, other.patch_mask)
    assert np.array_equal(other.patch_mask, task.build(sample, ctx, mask_seed=3).patch_mask)
    again = block_mask(14, 14, 75, np.random.default_rng(1))
    assert again.sum() == 75 and np.array_equal(again, block_mask(14, 14, 75, np.random.default_rng(1)))
    assert block_mask(1, 3, 2, np.random.default_rng(0)).sum() == 2  # no rectangle fits: single cells


def test_mask_stays_on_the_picture_of_a_wide_image(ctx, task):
    ex = task.build({"image": Image.new("RGB", (100, 40), (30, 90, 200))}, ctx)
    assert ex.patch_mask[4:].sum() == 0 and ex.patch_mask.sum() == round(0.4 * 4 * 8)  # 26 px of 64: 4 rows
    result = task.parse(ex.labels, ctx, ex.info, meta=ex.meta)
    assert result.picture.size == (100, 40)
    assert cell_pixels(ex.meta["masked"], 100, 40).any()


def test_parse_never_raises_on_random_ids(ctx, task, sample):
    ex = task.build(sample, ctx)
    rng = np.random.default_rng(0)
    for k in range(60):
        ids = rng.integers(-3, ctx.vocab.size + 5, size=int(rng.integers(0, 90))).tolist()
        out = task.parse(ids, ctx, ex.info if k % 2 else None, meta=ex.meta if k % 3 else None)
        assert out.codes.shape == (ctx.image_tokenizer.grid_size,) * 2


def test_forced_codes_processor_keeps_visible_codes(ctx):
    vocab, n = ctx.vocab, 4
    forced = [np.array([vocab.image_range[0] + 5, -1, -1, vocab.image_range[0] + 2]), None]
    proc = ForcedCodesProcessor(vocab, n, forced)
    scores = torch.zeros(2, vocab.size)
    first = proc(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.isfinite(first[0]).sum() == 1 and first[0].argmax() == vocab.image_range[0] + 5
    assert torch.isfinite(first[1]).sum() == ctx.vocab.image_range[1] - ctx.vocab.image_range[0]
    last = proc(torch.zeros(2, n + 1, dtype=torch.long), scores)
    assert (last.argmax(-1) == vocab.eos_id).all()


def test_metric_on_hand_made_cases(ctx, task, sample):
    ex = task.build(sample, ctx)
    truth, cells = ex.meta["codes"], ex.meta["masked"]
    perfect = task.parse(ex.labels, ctx, ex.info, meta=ex.meta)
    wrong_codes = truth.copy()
    wrong_codes[cells] = (truth[cells] + 1) % ctx.image_tokenizer.codebook_size
    half = truth.copy()
    hidden = np.flatnonzero(cells.reshape(-1))
    half.reshape(-1)[hidden[: len(hidden) // 2]] = wrong_codes.reshape(-1)[hidden[: len(hidden) // 2]]
    make = lambda codes: MaskedCodes(codes, cells, perfect.picture)  # noqa: E731
    assert example_scores(make(truth), ex)["code_accuracy"] == 1.0
    assert example_scores(make(wrong_codes), ex)["code_accuracy"] == 0.0
    wrong_visible = truth.copy()
    wrong_visible[~cells] = (truth[~cells] + 1) % ctx.image_tokenizer.codebook_size  # visible cells do not count
    m = task.metric([make(truth), make(half), make(wrong_visible)], [ex] * 3)
    assert m["code_accuracy"] == pytest.approx((1 + (len(hidden) - len(hidden) // 2) / len(hidden) + 1) / 3)
    assert m["masked_cells"] == cells.sum() and 0 <= m["baseline_accuracy"] <= 1
    assert 15 < m["psnr"] <= 100  # the same picture each time: the tokenizer's reconstruction in the cells
    assert [r["code_accuracy"] for r in m["per_example"]][0] == 1.0
    identical = MaskedCodes(truth, cells, ex.meta["original"])
    assert example_scores(identical, ex)["psnr"] == 100.0  # capped, not infinite


def test_task_needs_only_an_image_and_a_tokenizer(ctx, task):
    assert task.can_build({"image": Image.new("RGB", (8, 8))}) and not task.can_build({"caption": "a cat"})
    no_vq = TaskContext(ctx.vocab, ctx.text, ctx.locations, None, ctx.prompts, 64, 8)
    with pytest.raises(TaskError, match="image tokenizer"):
        task.build({"image": Image.new("RGB", (8, 8))}, no_vq)
    with pytest.raises(TaskError):
        get_task(MaskedImage.name, mask_ratio=1.5)


def test_own_templates_match_the_shipped_prompts(ctx, task):
    """The class carries its templates for prompt folders without the task; they are prompts/masked.yaml's."""
    assert ctx.prompts.canonical(task.name) == task.prompts["canonical"]
    assert ctx.prompts.paraphrases(task.name) == task.prompts["paraphrases"]


def test_folder_source_reads_only_images(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "b.png")
    Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("not a picture")
    source = open_source(parse_data_spec(f"folder:{tmp_path}"))
    assert len(source) == 2 and set(source[0]) == {"image", "path"}
    assert len(open_source({"source": "folder", "path": str(tmp_path), "recursive": False})) == 1
    (tmp_path / "c.png").write_text("broken")
    with pytest.raises(DataError, match="c.png"):
        open_source({"source": "folder", "path": str(tmp_path)})[1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_source({"source": "folder", "path": str(tmp_path / "empty")})
    with pytest.raises(DataError, match="does not exist"):
        open_source({"source": "folder", "path": str(tmp_path / "none")})


def test_three_steps_on_a_folder_of_pictures(tmp_path, monkeypatch):
    from unio.training import train

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    world = ShapesWorld(32, seed=5)
    for i in range(6):
        world[i]["image"].save(pictures / f"{i}.png")
    (tmp_path / "pretrain.yaml").write_text(f"""\
model: {{preset: tiny, image_size: 32, patch_size: 8, d_model: 64, encoder_layers: 1, decoder_layers: 1, num_heads: 2}}
tokenizers: tokenizers/shapes
data:
  train: [{{source: folder, path: {pictures}, tasks: {{{MaskedImage.name}: 1}}}}]
train: {{steps: 3, batch_size: 4, lr: 1.0e-3, warmup: 1, log_every: 1, save_every: 0, eval_every: 0}}
deepspeed: zero0
out: {tmp_path}/run
""")
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        last = train(load_recipe(tmp_path / "pretrain.yaml"))
    finally:
        torch.set_num_threads(threads)
    assert np.isfinite(last["loss"]) and f"loss/{MaskedImage.name}" in last
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    assert os.listdir(tmp_path / "run" / "checkpoints")

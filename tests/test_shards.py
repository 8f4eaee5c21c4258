"""WebDataset shards: `unio data pack` writes them from any reader, the `webdataset` source reads
them back exactly, streams them once per epoch over ranks x workers with a seeded shuffle, skips
damaged samples with a count, and serves `unio eval` and `unio train`."""
import io
import json
import shutil
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unio.cli.main import main
from unio.data.formats import open_source
from unio.data.mixture import ExampleDataset, Mixture
from unio.data.pack import pack
from unio.data.shapes import ShapesWorld
from unio.data.shard_format import rle_decode, rle_encode, tar_samples
from unio.data.shards import ShardStream, ShardWarning, WebDatasetSource
from unio.data.specs import open_data
from unio.errors import DataError, UnioError

ROOT = Path(__file__).resolve().parent.parent
N, SHARD = 12, 2  # 6 shards: enough for 2 ranks x 2 workers to have their own


def same(a, b) -> bool:
    """Deep equality that also checks types: arrays (dtype, shape, values), tuples vs lists, pictures."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, Image.Image):
        return isinstance(b, Image.Image) and (a.mode, a.size) == (b.mode, b.size) and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def strip(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "__key__"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds") / "shapes"
    pack("shapes:3", out, shard_size=SHARD, n=N)
    return out


@pytest.fixture
def source(shards):
    return WebDatasetSource(shards, shuffle=4, seed=0)


def keys(samples):
    return [s["__key__"] for s in samples]


# ---------------------------------------------------------------------------- writing and reading back
def test_pack_writes_named_shards_and_a_small_index(shards):
    names = sorted(p.name for p in shards.iterdir())
    assert names == ["index.json"] + [f"shard-{k:06d}.tar" for k in range(N // SHARD)]
    index = json.loads((shards / "index.json").read_text())
    assert index["samples"] == N and index["spec"] == "shapes:3" and index["entry"]["n"] == N
    assert [s["samples"] for s in index["shards"]] == [SHARD] * (N // SHARD)
    assert index["members"] == {"png": N, "json": N, "depth.npy": N}
    assert {"image", "caption", "qa", "refexps", "objects", "objects.mask", "depth", "label"} <= set(index["fields"])
    assert "circle" in index["classes"] and index["object_labels"]
    with open(shards / "shard-000000.tar", "rb") as f:
        members = list(tar_samples(f))
    assert [k for k, _ in members] == ["00000000", "00000001"]  # one key per sample, its members together
    assert sorted(members[0][1]) == ["depth.npy", "json", "png"]


def test_samples_read_back_equal_to_the_source(shards, source):
    world = ShapesWorld(seed=3)
    assert len(source) == N and source.skipped == 0
    for i in range(N):
        sample = source[i]
        assert sample["__key__"] == f"{i:08d}"
        assert same(strip(sample), world[i]), i   # image pixels, boxes, masks, depth, caption, qa, refexps
    assert [s["__key__"] for s in source] == [f"{i:08d}" for i in range(N)]
    assert source[5]["caption"] == world[5]["caption"] and source[2]["qa"] == world[2]["qa"]  # going back reopens


def test_masks_travel_as_rle_exactly():
    rng = np.random.default_rng(0)
    for mask in (rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        assert same(rle_decode(rle_encode(mask)), mask)
    with pytest.raises(DataError, match="add up"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_files_keep_their_original_bytes(tmp_path):
    """A sample read from a file keeps that file's encoded bytes (a JPEG stays the same JPEG)."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=80)
    mask = np.zeros((20, 30), np.uint8)
    mask[4:10, 5:20] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.save(tmp_path / "d.npy", rng.random((20, 30)).astype(np.float32))
    (tmp_path / "data.jsonl").write_text(json.dumps(
        {"image": "a.jpg", "caption": ["a picture", "noise"], "question": "what?", "answer": "noise",
         "objects": [{"box": [1, 2, 10, 12], "label": "thing", "mask": "m.png"}], "refexps": [["the thing", 0]],
         "label": "noise", "depth": "d.npy"}) + "\n")
    original = open_data(str(tmp_path / "data.jsonl"))[0][0]
    pack(str(tmp_path / "data.jsonl"), tmp_path / "out", shard_size=10)
    with open(tmp_path / "out" / "shard-000000.tar", "rb") as f:
        (key, members), = list(tar_samples(f))
    assert members["jpg"] == (tmp_path / "a.jpg").read_bytes()
    back = open_data(f"webdataset:{tmp_path / 'out'}")[0][0]
    assert same(strip(back), original)


def test_shards_from_other_tools_read_by_convention(tmp_path):
    """img2dataset-style shards (.jpg + .txt + .cls, no index.json): counted from the tar headers."""
    with tarfile.open(tmp_path / "x-0.tar", "w") as tar:
        for k in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (8, 6), (k * 50, 0, 0)).save(buf, format="JPEG")
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"picture {k}".encode()), ("cls", b"red")):
                info = tarfile.TarInfo(f"s{k}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    src = open_source({"source": "webdataset", "path": str(tmp_path / "x-*.tar")})
    assert len(src) == 3 and src[1]["caption"] == "picture 1" and src[1]["label"] == "red"
    assert src[2]["image"].size == (8, 6)


# ---------------------------------------------------------------------------- streaming
def test_each_sample_once_per_epoch_over_two_ranks_by_two_workers(source):
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            for worker in range(2):
                part = keys(source.stream(epoch, rank=rank, world_size=2, worker=worker, num_workers=2))
                assert part, (rank, worker)
                assert len(part) == source.reader_samples(epoch, rank=rank, world_size=2, worker=worker, num_workers=2)
                seen += part
        assert sorted(seen) == [f"{i:08d}" for i in range(N)], epoch


def test_fewer_shards_than_readers_still_once_per_epoch(shards):
    src = WebDatasetSource(str(shards / "shard-{000000..000002}.tar"), shuffle=2)
    with pytest.warns(ShardWarning, match="readers share shards"):
        seen = [k for r in range(2) for w in range(2)
                for k in keys(src.stream(0, rank=r, world_size=2, worker=w, num_workers=2))]
    assert sorted(seen) == [f"{i:08d}" for i in range(6)]


def test_dataloader_workers_and_distributed_rank_split_the_shards(shards, monkeypatch):
    """Real DataLoader workers (get_worker_info) on each of two ranks, the rank taken from
    torch.distributed when it is initialised (patched here: no process group is started)."""
    import unio.data.shards as module

    seen = []
    for rank in range(2):
        monkeypatch.setattr(module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(module.dist, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(module.dist, "get_world_size", lambda: 2)
        stream = ShardStream(str(shards), transform=lambda s: s["__key__"], shuffle=3, seed=1)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2,
                                             multiprocessing_context="fork")
        seen += list(loader)
    assert sorted(seen) == [f"{i:08d}" for i in range(N)]


def test_shuffle_is_seeded_and_differs_per_epoch(shards, source):
    first = keys(source.stream(0))
    assert keys(source.stream(0)) == first and sorted(first) == sorted(keys(source.stream(1)))
    assert keys(source.stream(1)) != first
    assert keys(WebDatasetSource(shards, shuffle=4, seed=1).stream(0)) != first
    stream = ShardStream(source, transform=lambda s: s["__key__"])
    assert list(stream) == first
    stream.set_epoch(1)
    assert list(stream) == keys(source.stream(1))
    unshuffled = keys(WebDatasetSource(shards, shuffle=0).stream(0))  # shard order only
    assert all(int(a) % 2 == 0 and int(b) == int(a) + 1 for a, b in zip(unshuffled[::2], unshuffled[1::2]))


def test_mixture_streams_each_sample_once_per_epoch_and_resumes_in_place(source):
    def run(mixture, batches):
        ds = ExampleDataset(mixture, lambda task, sample, rng: sample["__key__"])
        return [ds[d] for _ in range(batches) for d in mixture.next_batch()]

    mix = Mixture([source], [{"caption": 1}], seed=0, batch_size=4)
    drawn = run(mix, 6)  # two epochs of 12
    assert sorted(drawn[:N]) == sorted(drawn[N:]) == [f"{i:08d}" for i in range(N)]
    assert drawn[:N] != drawn[N:]
    state = Mixture([source], [{"caption": 1}], seed=0, batch_size=4)
    run(state, 2)
    resumed = Mixture([WebDatasetSource(source.path, shuffle=4, seed=0)], [{"caption": 1}], seed=0, batch_size=4)
    resumed.load_state_dict(state.state_dict())
    assert run(resumed, 4) == drawn[8:24]


# ---------------------------------------------------------------------------- bad input
def _rewrite(path: Path, change) -> None:
    """Write the shard again with ``change(key, members)`` applied to each sample."""
    with open(path, "rb") as f:
        samples = list(tar_samples(f))
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in change(key, dict(members)).items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def damaged(shards, tmp_path) -> Path:
    """Shard 1: sample 2's image is garbage, sample 3 has no .json; shard 2: sample 5 has no depth
    map; shard 3 is cut off in the middle of its second sample."""
    out = tmp_path / "damaged"
    shutil.copytree(shards, out)

    def change(key, members):
        if key == "00000002":
            members["png"] = b"not a png"
        if key == "00000003":
            del members["json"]
        if key == "00000005":
            del members["depth.npy"]
        return members

    _rewrite(out / "shard-000001.tar", change)
    _rewrite(out / "shard-000002.tar", change)
    data = (out / "shard-000003.tar").read_bytes()
    (out / "shard-000003.tar").write_bytes(data[: len(data) * 3 // 4])
    return out


def test_damaged_samples_are_skipped_with_a_count_and_the_shard_named(damaged):
    src = WebDatasetSource(damaged, shuffle=4)
    with pytest.warns(ShardWarning) as caught:
        got = keys(src.stream(0))
    assert sorted(got) == [f"{i:08d}" for i in (0, 1, 4, 6, 8, 9, 10, 11)]
    assert src.skipped == 4
    assert src.skipped_by_shard == Counter({"shard-000001.tar": 2, "shard-000002.tar": 1, "shard-000003.tar": 1})
    text = "\n".join(str(w.message) for w in caught)
    assert "shard-000001.tar sample 00000002" in text and "not a readable image" in text
    assert ".json is missing" in text and ".depth.npy are missing" in text and "shard-000003.tar" in text
    with warnings.catch_warnings():  # the training mixture goes on past them, epoch after epoch
        warnings.simplefilter("ignore")
        mix = Mixture([src], [{"caption": 1}], seed=0, batch_size=8)
        ds = ExampleDataset(mix, lambda task, sample, rng: sample["__key__"])
        assert len([ds[d] for _ in range(3) for d in mix.next_batch()]) == 24


def test_stop_policy_raises_naming_the_shard(damaged):
    src = open_source({"source": "webdataset", "path": str(damaged), "on_bad_record": "stop", "shuffle": 0})
    with pytest.raises(DataError, match=r"shard-00000[123]\.tar.*on_bad_record: skip"):
        list(src.stream(0))
    assert open_source({"source": "webdataset", "path": str(damaged)}, "error").bad.policy == "skip"  # its default


def test_a_shard_missing_from_the_index_is_left_out_with_a_count(shards, tmp_path):
    shutil.copytree(shards, tmp_path / "s")
    (tmp_path / "s" / "shard-000004.tar").unlink()
    with pytest.warns(ShardWarning, match="shard-000004.tar: is listed in index.json but missing"):
        src = WebDatasetSource(tmp_path / "s")
    assert len(src) == N - SHARD and src.skipped == SHARD and src.skipped_shards == ["shard-000004.tar"]
    with pytest.raises(DataError, match="shard-000004.tar"):
        WebDatasetSource(tmp_path / "s", on_bad_record="stop")


def test_no_shards_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for spec in (f"webdataset:{tmp_path / 'empty'}", f"webdataset:{tmp_path}/shard-{{000000..000003}}.tar",
                 f"webdataset:{tmp_path}/nothing-*.tar"):
        with pytest.raises(UnioError, match="no WebDataset shards"):
            open_data(spec)


def test_recipes_take_a_shard_pattern(shards, tmp_path, monkeypatch):
    from unio.recipe import load_recipe

    monkeypatch.chdir(shards.parent)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: tiny}\ntokenizers: %s\ndata:\n  train: [{source: webdataset, "
                      "path: 'shapes/shard-{000000..000001}.tar', shuffle: 10, tasks: {caption: 1}}]\n"
                      % (ROOT / "tokenizers" / "shapes"))
    entry = load_recipe(recipe)["data"]["train"][0]
    assert entry["path"] == str(shards / "shard-{000000..000001}.tar") and entry["shuffle"] == 10
    assert len(open_source(entry)) == 4


# ---------------------------------------------------------------------------- the commands
def test_cli_pack_prints_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["data", "pack", "shapes:5", "--n", "5", "--out", str(out), "--shard-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 shards (shard-000000.tar .. shard-000002.tar) with 5 samples" in printed
    assert f"webdataset:{out}" in printed and len(WebDatasetSource(out)) == 5
    assert main(["data", "pack", "shapes:5", "--n", "5", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "pack", "shapes:5", "--out", str(tmp_path / "t")]) == 2
    assert "endless" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_eval_reads_shards_in_order(micro_fast_export, damaged, tmp_path, capsys):
    out = tmp_path / "m.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ShardWarning)
        rc = main(["eval", "--model", str(micro_fast_export), "--data", f"webdataset:{damaged}", "--tasks", "caption",
                   "detect", "--n", "3", "--batch-size", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["caption"]["n"] == 3 and data["run"]["data"] == f"webdataset:{damaged}"


def test_a_short_training_run_reads_shards(shards, micro_tokenizers, tmp_path, monkeypatch):
    from unio.recipe import load_recipe
    from unio.training import train

    monkeypatch.chdir(ROOT)
    recipe = tmp_path / "micro.yaml"
    recipe.write_text(f"""\
model: {{preset: tiny, image_size: 64, patch_size: 8, d_model: 64, encoder_layers: 1, decoder_layers: 1, num_heads: 2}}
tokenizers: {micro_tokenizers}
num_bins: 100
data:
  train: [{{source: webdataset, path: {shards}, shuffle: 4, tasks: {{caption: 1, detect: 1, classify: 1}}}}]
train: {{steps: 2, batch_size: 4, lr: 3.0e-3, warmup: 1, log_every: 1, eval_every: 0, save_every: 0, seed: 0}}
deepspeed: zero0
""")
    train(load_recipe(recipe, [f"out={tmp_path / 'run'}"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    assert "circle" in json.loads((tmp_path / "run" / "classes.json").read_text())["image"]

"""Items of several pictures through the front doors: unio predict (pairs, folders of frames, GIFs),
unio serve (repeated file parts, JSON images), and the refusals of each."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest

import unio
from unio.cli.main import main as cli
from unio.data.shapes_clips import ShapesClips
from unio.data.shapes_pairs import ShapesPairs
from unio.tasks.reason import Reason
from unio.tasks.video import VideoCaption, VideoClassify

from conftest import write_micro_export


@pytest.fixture(scope="module")
def model(tmp_path_factory, micro_tokenizers):
    return write_micro_export(tmp_path_factory.mktemp("several") / "m", micro_tokenizers, max_images=4)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    sample = ShapesPairs(seed=3)[0]
    paths = []
    for k, im in enumerate(sample["images"]):
        paths.append(d / f"{k}.png")
        im.save(paths[-1])
    return sample, paths


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    world = ShapesClips(seed=3)
    # a moving object: every frame differs (a GIF writer merges identical frames)
    sample = next(world[i] for i in range(50) if world[i]["action"].startswith("moves"))
    (d / "frames").mkdir()
    for k, im in enumerate(sample["images"]):
        im.save(d / "frames" / f"f{k:02d}.png")
    sample["images"][0].save(d / "clip.gif", save_all=True, append_images=sample["images"][1:], duration=100)
    return sample, d


def test_predict_pair_and_clip_match_the_pipeline(model, pair, clip, tmp_path, capsys):
    sample, paths = pair
    statement = sample["statements"][0][0]
    assert cli(["predict", Reason.name, "--model", str(model), *map(str, paths), "--text", statement]) == 0
    rec = json.loads(capsys.readouterr().out)
    pipe = unio.load(model)
    direct = pipe.run(Reason.name, list(paths), statement=statement)
    assert rec["images"] == [str(p) for p in paths] and rec["label"] == str(direct) in ("true", "false")
    clip_sample, d = clip
    for source in (d / "frames", d / "clip.gif"):
        out = tmp_path / f"{source.stem}.jsonl"
        assert cli(["predict", VideoClassify.name, "--model", str(model), str(source), "--out", str(out),
                    "--viz", str(tmp_path / "viz")]) == 0
        rec = json.loads(out.read_text())
        assert rec["frames"] == 4 and rec["label"] == str(pipe.run(VideoClassify.name, clip_sample["images"]))
        assert (tmp_path / "viz" / f"item_{VideoClassify.name}.png").is_file()
    capsys.readouterr()


def test_predict_refusals(model, pair, tmp_path, capsys):
    _, paths = pair
    assert cli(["predict", Reason.name, "--model", str(model), str(paths[0]), "--text", "both images"]) == 2
    err = capsys.readouterr().err
    assert "reads 2 images" in err and "Traceback" not in err
    odd = tmp_path / "odd"
    odd.mkdir()
    from PIL import Image
    Image.new("RGB", (20, 20)).save(odd / "a.png")
    Image.new("RGB", (30, 20)).save(odd / "b.png")
    assert cli(["predict", VideoCaption.name, "--model", str(model), str(odd)]) == 2
    err = capsys.readouterr().err
    assert "share one size" in err and "Traceback" not in err
    single = tmp_path / "single"
    write_micro_export(single, model / "tokenizers" if (model / "tokenizers").is_dir() else model)
    assert cli(["predict", Reason.name, "--model", str(single), *map(str, paths), "--text", "both"]) == 2
    assert "max_images" in capsys.readouterr().err


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_serve_pairs_and_clips(model, pair, clip):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from unio.serving import create_app
    pipe = unio.load(model)
    sample, paths = pair
    statement = sample["statements"][1][0]
    clip_sample, _ = clip
    app = create_app(pipe, max_batch=4, max_wait_ms=50)

    async def body(client):
        files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
        multipart = await client.post(f"/v1/{Reason.name}", files=files, data={"statement": statement})
        frames = [base64.b64encode(_png(im)).decode() for im in clip_sample["images"]]
        as_json = await client.post(f"/v1/{VideoClassify.name}", json={"images": frames})
        one = await client.post(f"/v1/{Reason.name}", files=files[:1], data={"statement": statement})
        single = await client.post("/v1/caption", files=files)
        tasks = await client.get("/v1/tasks")
        return multipart, as_json, one, single, tasks

    async def main():
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://unio",
                                         timeout=120) as client:
                return await asyncio.wait_for(body(client), 120)
        finally:
            await app.state.batcher.stop()

    multipart, as_json, one, single, tasks = asyncio.run(main())
    assert multipart.status_code == 200, multipart.text
    rec = multipart.json()
    assert rec["images"] == 2 and rec["label"] == str(pipe.run(Reason.name, list(paths), statement=statement))
    assert as_json.status_code == 200 and as_json.json()["label"] == str(pipe.run(VideoClassify.name,
                                                                                     clip_sample["images"]))
    assert one.status_code == 422 and "reads 2 images" in one.json()["error"]
    assert single.status_code == 422 and "reads one image" in single.json()["error"]
    listed = {t["name"]: t for t in tasks.json()["tasks"]}
    assert listed[Reason.name]["num_images"] == 2 and listed[VideoClassify.name]["num_images"] is None

"""``unio serve``: the HTTP app in-process (httpx's ASGI transport) on the untrained micro model and
the shipped shapes-demo, and once as the real ``unio serve`` process on a free loopback port.

Every answer is checked against a direct ``pipe.run`` on the same input; every wait is bounded."""
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import unio
from unio.cli.main import main as cli
from unio.data.shapes import ShapesWorld
from unio.errors import InputError
from unio.tasks import get_task, task_names

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from unio.serving import create_app  # noqa: E402  (after the skip: needs the web stack)
from unio.serving.inputs import jsonable  # noqa: E402
from conftest import stop  # noqa: E402

BOX = [4.0, 6.0, 40.0, 44.0]
# (task, its inputs, options) for every task the micro model has; sampled tasks get a seed, so
# that the server's answer and the direct pipe.run draw the same picture
CASES = [
    ("caption", {}, {}),
    ("vqa", {"question": "how many circles are there?"}, {}),
    ("classify", {}, {}),
    ("describe_region", {"box": BOX}, {}),
    ("classify_region", {"box": BOX}, {}),
    ("detect", {}, {"max_objects": 3}),
    ("ground", {"expression": "the red circle"}, {}),
    ("segment", {"expression": "the red circle"}, {}),
    ("depth", {}, {}),
    ("generate_image", {"text": "a small red circle"}, {"seed": 0}),
    ("inpaint", {"box": BOX, "text": "a blue square"}, {"seed": 0}),
]


@pytest.fixture(scope="module")
def micro(micro_export):
    return unio.load(micro_export)


@pytest.fixture(scope="module")
def demo():
    return unio.load("shapes-demo")


@pytest.fixture(scope="module")
def images():
    world = ShapesWorld(seed=7)
    return [world[i] for i in range(8)]


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serve(app, body, limit: float = 120.0):
    """``await body(client)`` against ``app`` in a fresh event loop, bounded by ``limit`` seconds."""
    async def main():
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://unio",
                                         timeout=limit) as client:
                return await asyncio.wait_for(body(client), limit)
        finally:
            await app.state.batcher.stop()
    return asyncio.run(main())


async def until(condition, limit: float = 30.0):
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


def direct(pipe, task, image, inputs, options, tmp_path: Path) -> dict:
    """The record ``unio predict`` would write for a direct ``pipe.run`` (files under tmp_path)."""
    t = get_task(task)
    result = pipe.run(task, image if t.needs_image else None, **inputs, **options)
    rec = t.to_record(result, inputs, tmp_path, "direct")
    head = {"task": task, **({"width": image.width, "height": image.height} if t.needs_image else {})}
    return {**head, **rec}


def same_record(got: dict, want: dict, tmp_path: Path):
    """The server's record equals the direct one, its inlined files equal to the files written."""
    assert set(got) - {"image"} == set(want), (sorted(got), sorted(want))
    for key, value in want.items():
        if isinstance(value, str) and value.startswith(str(tmp_path)):
            assert base64.b64decode(got[key]) == Path(value).read_bytes(), key
        else:
            assert got[key] == jsonable(json.loads(json.dumps(value))), key


class Gated:
    """A pipeline whose ``run`` waits for ``gate`` (the test decides when the model answers)."""

    def __init__(self, pipe, fail_on=None):
        self.pipe, self.fail_on = pipe, fail_on
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def run(self, task, image=None, **kw):
        self.entered.set()
        assert self.gate.wait(60)
        self.calls.append(len(image) if isinstance(image, list) else 1)
        if self.fail_on and self.fail_on in (kw.get("question") or []):
            raise InputError(f"the model cannot answer {self.fail_on!r}")
        return self.pipe.run(task, image, **kw)


# ---------------------------------------------------------------------- every task, both encodings
@pytest.mark.parametrize("task,inputs,options", CASES, ids=[c[0] for c in CASES])
def test_each_task_answers_like_a_direct_run(micro, images, tmp_path, task, inputs, options):
    assert task in micro.tasks
    t = get_task(task)
    image = images[0]["image"]
    want = direct(micro, task, image, inputs, options, tmp_path)

    async def body(c):
        files = {"image": ("shape.png", png(image))} if t.needs_image else None
        form = {k: ",".join(map(str, v)) if k == "box" else v for k, v in inputs.items()}
        multipart = await c.post(f"/v1/{task}", data={**form, "options": json.dumps(options)},
                                 files=files)
        as_json = await c.post(f"/v1/{task}", json={**({"image": b64(png(image))} if t.needs_image else {}),
                                                    **inputs, "options": options})
        return multipart, as_json

    multipart, as_json = serve(create_app(micro), body)
    assert multipart.status_code == 200, multipart.text
    assert as_json.status_code == 200, as_json.text
    if t.needs_image:
        assert multipart.json().pop("image") == "shape.png"
    same_record(multipart.json(), want, tmp_path)
    same_record(as_json.json(), want, tmp_path)
    if task == "depth":   # the inlined .npy is the map itself
        arr = np.load(io.BytesIO(base64.b64decode(as_json.json()["depth_npy"])))
        np.testing.assert_array_equal(arr, micro.depth(image))


def test_detect_coco_format(micro, images, tmp_path):
    image = images[1]["image"]
    t = get_task("detect")
    rec = direct(micro, "detect", image, {}, {}, tmp_path)
    want = t.coco_results([{**rec, "image": "000000000042.png"}], micro.classes.get("object") or [])

    async def body(c):
        coco = await c.post("/v1/detect?format=coco", files={"image": ("000000000042.png", png(image))})
        wrong = await c.post("/v1/caption?format=coco", files={"image": ("a.png", png(image))})
        return coco, wrong

    coco, wrong = serve(create_app(micro), body)
    assert coco.status_code == 200, coco.text
    assert coco.json() == jsonable({"results": want[0], "categories": want[1]})
    assert all(r["image_id"] == 42 for r in coco.json()["results"])
    assert wrong.status_code == 422 and "detect" in wrong.json()["error"]


def test_tasks_health_ready_and_a_model_loaded_in_the_background(micro):
    loaded = threading.Event()

    def loader():
        loaded.wait(30)
        return micro

    async def body(c):
        assert (await c.get("/health")).json() == {"status": "ok"}
        first = await c.get("/ready")
        early = await c.post("/v1/caption", json={})
        loaded.set()
        deadline = time.monotonic() + 30
        while (ready := await c.get("/ready")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return first, early, ready, await c.get("/v1/tasks"), await c.get("/metrics")

    first, early, ready, tasks, metrics = serve(create_app(loader), body)
    assert first.status_code == 503 and early.status_code == 503
    assert ready.json()["tasks"] == micro.tasks
    listed = {t["name"]: t for t in tasks.json()["tasks"]}
    assert sorted(listed) == sorted(micro.tasks)
    assert listed["vqa"]["inputs"] == ["question"] and listed["inpaint"]["inputs"] == ["box", "text"]
    assert listed["detect"]["options"]["threshold"]["type"] == "float" and "coco" in listed["detect"]["formats"]
    assert listed["generate_image"]["needs_image"] is False
    assert "unio_model_ready 1" in metrics.text


# ---------------------------------------------------------------------- batching
@pytest.mark.parametrize("batching", ["step", "call"])
def test_concurrent_requests_share_batches_without_mix_ups(demo, images, batching):
    """8 captions and 8 groundings fired at once: batches of more than one, each answer its own."""
    pils = [s["image"] for s in images]
    expressions = [s["refexps"][0][0] if s["refexps"] else "the red circle" for s in images]
    want_captions = [demo.caption(im) for im in pils]
    want_boxes = [demo.ground(im, e).to_list() for im, e in zip(pils, expressions)]
    assert len(set(want_captions)) > 4        # different answers, so a mix-up would show
    app = create_app(demo, max_batch=8, max_wait_ms=300, batching=batching)

    async def body(c):
        calls = [c.post("/v1/caption", files={"image": (f"{i}.png", png(im))}) for i, im in enumerate(pils)]
        calls += [c.post("/v1/ground", json={"image": b64(png(im)), "expression": e}) for im, e in zip(pils, expressions)]
        return await asyncio.gather(*calls)

    answers = serve(app, body)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert [r.json()["text"] for r in answers[:8]] == want_captions
    assert [r.json()["box"] for r in answers[8:]] == want_boxes
    assert [r.json()["expression"] for r in answers[8:]] == expressions
    sizes = list(app.state.batcher.batch_sizes)
    if batching == "call":  # requests per model call
        assert max(sizes) > 1 and sum(sizes) == 16, sizes
    else:                   # rows per decoding step: never more than max_batch
        assert 1 < max(sizes) <= 8, sizes


@pytest.mark.parametrize("mode", ["step", "mixed", "per-task"])
def test_requests_of_several_tasks_share_a_model_call(demo, images, mode):
    """Captions, questions, detections, groundings and depth maps fired at once, each answer its
    own: by default (step batching) they decode together, joining at the next step; with
    ``batching="call"`` and mix_tasks (``unio serve --batching call --mix-tasks``) one model call
    answers them all (run_many); without mix_tasks, one call per task."""
    mix = mode == "mixed"
    pils = [s["image"] for s in images[:3]]
    asks = [("caption", {}), ("vqa", {"question": "how many circles are there?"}), ("detect", {}),
            ("ground", {"expression": "the red circle"}), ("depth", {})]
    jobs = [(t, im, kw) for t, kw in asks for im in pils]
    steps = []
    app = create_app(demo, max_batch=16, max_wait_ms=500, mix_tasks=mix,
                     batching="step" if mode == "step" else "call")
    if mode == "step":
        record = app.state.batcher.on_batch
        app.state.batcher.on_batch = lambda tasks, rows, t: steps.append(set(tasks)) or record(tasks, rows, t)

    async def body(c):
        return await asyncio.gather(*[c.post(f"/v1/{t}", json={"image": b64(png(im)), **kw}) for t, im, kw in jobs])

    answers = serve(app, body)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    for (t, im, kw), r in zip(jobs, answers):
        want = demo.run(t, im, **kw)
        got = r.json()
        if t in ("caption", "vqa"):
            assert got["text"] == want
        elif t == "ground":
            assert got["box"] == [float(v) for v in want.to_list()]
        elif t == "detect":
            assert got["labels"] == [d.label for d in want]
            assert np.allclose(got["scores"], [d.score for d in want], atol=1e-5)
        else:
            depth = np.load(io.BytesIO(base64.b64decode(got["depth_npy"])))
            assert np.abs(depth - want).max() < 1e-4
    sizes = sorted(app.state.batcher.batch_sizes)
    if mode == "step":  # several tasks' rows in one decoding step; the depth maps' late steps alone
        assert max(len(t) for t in steps) >= 3 and max(sizes) > 5, (steps, sizes)
        assert "depth" in steps[-1] and 'unio_batch_size_count{task="caption"}' in app.state.metrics.render()
        return
    assert sizes == ([15] if mix else [3, 3, 3, 3, 3]), sizes
    metrics = app.state.metrics.render()
    assert 'unio_batch_size_count{task="depth"} 1' in metrics
    assert f'unio_batch_size_sum{{task="depth"}} {15 if mix else 3}' in metrics


def test_one_failing_request_does_not_fail_its_batch(micro, images):
    gated = Gated(micro, fail_on="boom")
    gated.gate.set()
    app = create_app(gated, max_batch=4, max_wait_ms=300, batching="call")
    questions = ["what color is it?", "boom", "how many?", "is there a star?"]

    async def body(c):
        return await asyncio.gather(*[c.post("/v1/vqa", json={"image": b64(png(images[i]["image"])), "question": q})
                                      for i, q in enumerate(questions)])

    answers = serve(app, body)
    assert [r.status_code for r in answers] == [200, 422, 200, 200]
    assert "boom" in answers[1].json()["error"]
    assert gated.calls[0] == 4                   # they were batched, then answered one by one
    for i, q in enumerate(questions):
        if q != "boom":
            assert answers[i].json()["text"] == micro.ask(images[i]["image"], q)


def test_a_client_that_disconnects_does_not_break_its_batch(micro, images):
    gated = Gated(micro)
    app = create_app(gated, max_batch=4, max_wait_ms=1000, batching="call")
    pils = [s["image"] for s in images[:4]]

    async def body(c):
        calls = [asyncio.ensure_future(c.post("/v1/caption", files={"image": ("a.png", png(im))})) for im in pils]
        await until(lambda: app.state.batcher.running == 4 and gated.entered.is_set())
        calls[1].cancel()                                      # gone while its batch runs
        late = asyncio.ensure_future(c.post("/v1/caption", files={"image": ("a.png", png(pils[0]))}))
        await until(lambda: app.state.batcher.queue_length == 1)
        late.cancel()                                          # gone while queued: taken out of the queue
        await until(lambda: app.state.batcher.queue_length == 0)
        gated.gate.set()
        done = await asyncio.gather(*calls, return_exceptions=True)
        after = await c.post("/v1/caption", files={"image": ("a.png", png(pils[3]))})
        return done, after, await c.get("/metrics")

    done, after, metrics = serve(app, body)
    assert isinstance(done[1], asyncio.CancelledError)
    for i in (0, 2, 3):
        assert done[i].status_code == 200 and done[i].json()["text"] == micro.caption(pils[i])
    assert after.status_code == 200 and after.json()["text"] == micro.caption(pils[3])
    assert list(app.state.batcher.batch_sizes) == [4, 1]
    assert 'unio_requests_total{task="caption",status="499"} 2' in metrics.text


def test_step_batching_drops_a_request_whose_client_goes_away_mid_decoding(demo, images):
    """Two depth maps (70 steps) decoding together, one client gone at a step: its row leaves the
    batch (the last steps decode one row), the other answers as a direct run."""
    pils = [s["image"] for s in images[:2]]
    app = create_app(demo, max_batch=4)

    async def body(c):
        calls = [asyncio.ensure_future(c.post("/v1/depth", files={"image": ("a.png", png(im))})) for im in pils]
        await until(lambda: app.state.batcher.running == 2)
        calls[0].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        return done, await c.get("/metrics")

    (gone, kept), metrics = serve(app, body)
    assert isinstance(gone, asyncio.CancelledError) and kept.status_code == 200
    depth = np.load(io.BytesIO(base64.b64decode(kept.json()["depth_npy"])))
    assert np.abs(depth - demo.depth(pils[1])).max() < 1e-4
    sizes = list(app.state.batcher.batch_sizes)
    assert 2 in sizes and sizes[-1] == 1, sizes
    assert 'unio_requests_total{task="depth",status="499"} 1' in metrics.text


def test_step_batching_survives_a_failing_step(micro, images, monkeypatch):
    """The model fails in one decoding step: the requests in that step get a 500 each, and the
    next request decodes in a fresh batch as if nothing had happened."""
    from unio.model import decoding

    step, failed = decoding.LiveBatch.step, []

    def once(self, last_ids):
        if not failed:
            failed.append(1)
            raise RuntimeError("a broken kernel")
        return step(self, last_ids)

    monkeypatch.setattr(decoding.LiveBatch, "step", once)
    app = create_app(micro, max_batch=4)
    data = png(images[0]["image"])

    async def body(c):
        first = await c.post("/v1/caption", files={"image": ("a.png", data)})
        return first, await c.post("/v1/caption", files={"image": ("a.png", data)})

    first, second = serve(app, body)
    assert first.status_code == 500 and "RuntimeError" in first.json()["error"]
    assert second.status_code == 200 and second.json()["text"] == micro.caption(images[0]["image"])


# ---------------------------------------------------------------------- limits
def test_a_full_queue_answers_429_and_a_slow_model_504(micro, images):
    gated = Gated(micro)
    app = create_app(gated, max_batch=1, max_wait_ms=0, max_queue=2, batching="call")
    data = png(images[0]["image"])

    async def body(c):
        post = lambda: asyncio.ensure_future(c.post("/v1/caption", files={"image": ("a.png", data)}))  # noqa: E731
        first = post()
        await until(gated.entered.is_set)                      # the worker is busy with it
        queued = [post(), post()]
        await until(lambda: app.state.batcher.queue_length == 2)
        refused = await c.post("/v1/caption", files={"image": ("a.png", data)})
        gated.gate.set()
        return refused, await first, await asyncio.gather(*queued)

    refused, first, queued = serve(app, body)
    assert refused.status_code == 429 and "queue is full" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1"
    assert first.status_code == 200 and all(r.status_code == 200 for r in queued)

    slow = Gated(micro)
    app = create_app(slow, timeout=0.2, batching="call")

    async def late(c):
        answer = await c.post("/v1/caption", files={"image": ("a.png", data)})
        slow.gate.set()
        return answer

    answer = serve(app, late)
    assert answer.status_code == 504 and "--timeout" in answer.json()["error"]


def test_oversized_bodies_and_images_answer_413(micro, images):
    data = png(images[0]["image"])

    async def body(c):
        big = await c.post("/v1/caption", files={"image": ("a.png", data + b"\0" * 30_000)})
        huge_json = await c.post("/v1/caption", json={"image": "A" * 40_000})
        return big, huge_json

    big, huge_json = serve(create_app(micro, max_upload_mb=0.02), body)
    assert big.status_code == 413 and "--max-upload-mb" in big.json()["error"]
    assert huge_json.status_code == 413

    async def pixels(c):
        return await c.post("/v1/caption", files={"image": ("a.png", data)})

    answer = serve(create_app(micro, max_pixels=1000), pixels)
    assert answer.status_code == 413 and "64x64 = 4096 pixels" in answer.json()["error"]


def test_bad_requests_get_the_message_the_cli_prints(micro, micro_export, images, tmp_path, capsys):
    good = png(images[0]["image"])
    path = tmp_path / "shape.png"
    path.write_bytes(good)

    async def body(c):
        return {
            "unknown_task": await c.post("/v1/count_sheep", files={"image": ("a.png", good)}),
            "broken_image": await c.post("/v1/caption", files={"image": ("a.png", b"not a picture")}),
            "truncated": await c.post("/v1/caption", json={"image": b64(good[: len(good) // 2])}),
            "not_base64": await c.post("/v1/caption", json={"image": "%%%"}),
            "bad_option": await c.post("/v1/detect", json={"image": b64(good), "options": {"threshold": "abc"}}),
            "cli_option": await c.post("/v1/detect", data={"option": "threshold=abc"}, files={"image": ("a.png", good)}),
            "unknown_option": await c.post("/v1/caption", json={"image": b64(good), "options": {"colour": 1}}),
            "missing_input": await c.post("/v1/vqa", json={"image": b64(good)}),
            "bad_box": await c.post("/v1/inpaint", json={"image": b64(good), "box": [9, 9, 1, 1], "text": "x"}),
            "unknown_field": await c.post("/v1/caption", json={"image": b64(good), "question": "why?"}),
            "no_image": await c.post("/v1/caption", json={}),
            "wrong_type": await c.post("/v1/caption", content=b"hello", headers={"content-type": "text/plain"}),
            "not_json": await c.post("/v1/caption", content=b"{", headers={"content-type": "application/json"}),
            "no_route": await c.get("/v2/nothing"),
        }

    got = serve(create_app(micro), body)
    for name, r in got.items():
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert set(r.json()) == {"error"} and "Traceback" not in r.text, (name, r.text)
    assert got["unknown_task"].status_code == 404 and got["no_route"].status_code == 404
    assert got["wrong_type"].status_code == 415
    for name in ("broken_image", "truncated", "not_base64", "bad_option", "cli_option", "unknown_option",
                 "missing_input", "bad_box", "unknown_field", "no_image"):
        assert got[name].status_code == 422, name
    assert "could not read the uploaded file as an image" in got["broken_image"].json()["error"]
    assert "it takes" in got["unknown_field"].json()["error"]
    # the same words as `unio predict`
    for args, key in [(["count_sheep"], "unknown_task"), (["detect", "--option", "threshold=abc"], "bad_option"),
                      (["caption", "--option", "colour=1"], "unknown_option")]:
        capsys.readouterr()
        assert cli(["predict", *args, "--model", str(micro_export), str(path)]) == 2
        assert got[key].json()["error"] in capsys.readouterr().err
    assert got["cli_option"].json() == got["bad_option"].json()
    assert got["unknown_task"].json()["error"].startswith("unknown task 'count_sheep'; choose one of: ")
    assert set(task_names()) <= set(got["unknown_task"].json()["error"].split(": ")[1].split(", "))


def test_a_token_guards_everything_but_the_probes(micro, images):
    data = png(images[0]["image"])
    app = create_app(micro, token="s3cret")

    async def body(c):
        post = lambda h: c.post("/v1/caption", files={"image": ("a.png", data)}, headers=h)  # noqa: E731
        return (await post({}), await post({"Authorization": "Bearer wrong"}), await post({"Authorization": "Bearer s3cret"}),
                await c.get("/metrics"), await c.get("/health"), await c.get("/ready"))

    none, wrong, right, metrics, health, ready = serve(app, body)
    assert none.status_code == 401 and wrong.status_code == 401 and metrics.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer" and "Bearer" in none.json()["error"]
    assert right.status_code == 200 and health.status_code == 200 and ready.status_code == 200


def test_metrics_count_requests_batches_and_latency(micro, images):
    data = png(images[0]["image"])

    async def body(c):
        await asyncio.gather(*[c.post("/v1/caption", files={"image": ("a.png", data)}) for _ in range(3)])
        await c.post("/v1/caption", files={"image": ("a.png", b"junk")})
        await c.post("/v1/nope", json={})
        return await c.get("/metrics")

    r = serve(create_app(micro, max_wait_ms=200, batching="call"), body)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for line in ('unio_requests_total{task="caption",status="200"} 3', 'unio_requests_total{task="caption",status="422"} 1',
                 'unio_requests_total{task="_unknown",status="404"} 1', 'unio_batch_size_bucket{task="caption",le="+Inf"} 1',
                 'unio_batch_size_sum{task="caption"} 3', 'unio_request_latency_seconds_count{task="caption"} 4',
                 "unio_queue_length 0", "# TYPE unio_batch_size histogram"):
        assert line in text, line


# ---------------------------------------------------------------------- the command
def test_serve_refuses_a_public_host_without_a_token(micro_export, monkeypatch, capsys):
    monkeypatch.delenv("UNIO_SERVE_TOKEN", raising=False)
    assert cli(["serve", "--model", str(micro_export), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert cli(["serve", "--model", "no-such-model", "--port", "1"]) == 2
    assert "neither an export directory nor a shipped model" in capsys.readouterr().err


def test_the_real_server_answers_on_loopback(micro, micro_export, images):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "UNIO_SERVE_TOKEN": "t0ken"}
    proc = subprocess.Popen([sys.executable, "-m", "unio", "serve", "--model", str(micro_export), "--port", str(port),
                             "--threads", "1", "--log-level", "warning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server did not come up in 120 s"
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            image = images[2]["image"]
            r = client.post("/v1/vqa", files={"image": ("a.png", png(image))}, data={"question": "how many?"},
                            headers={"Authorization": "Bearer t0ken"})
            assert r.status_code == 200, r.text
            assert r.json()["text"] == micro.ask(image, "how many?")
            assert client.post("/v1/vqa", data={"question": "x"}).status_code == 401
    finally:
        stop(proc)

"""shapes-demo's answers on fixed held-out images, pinned: a change of layout or plumbing must not
change what the shipped model predicts.

The pins in ``data/shapes_demo_pinned.json`` were written by this module's :func:`predictions`
(``python tests/test_pinned_predictions.py --write``) and are compared with tolerances only where
floating point enters (scores, depth values, generated pixels).
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

PINS = Path(__file__).parent / "data" / "shapes_demo_pinned.json"
SEED, N = 4242, 3   # a shapes seed that no training, evaluation or choice of the model used


def _summary(value):
    """A task result as comparable JSON: boxes and scores rounded, maps and pictures summarised."""
    from PIL import Image
    if isinstance(value, Image.Image):
        thumb = np.asarray(value.convert("RGB").resize((8, 8), Image.BOX), dtype=np.float64)
        return {"picture": list(value.size), "thumb": np.round(thumb, 2).tolist()}
    if isinstance(value, np.ndarray) and value.dtype == bool:
        return {"mask": value.shape, "area": int(value.sum()),
                "rows": [int(r) for r in np.flatnonzero(value.any(1))][:64]}
    if isinstance(value, np.ndarray):
        h, w = value.shape
        pooled = value[: h // 8 * 8, : w // 8 * 8].reshape(8, h // 8, 8, w // 8).mean((1, 3))
        return {"depth": list(value.shape), "pooled": np.round(pooled, 5).tolist()}
    if isinstance(value, list):
        return [_summary(v) for v in value]
    if hasattr(value, "score") and isinstance(value, str):
        return {"label": str(value), "score": round(float(value.score), 5)}
    if hasattr(value, "to_dict"):
        d = value.to_dict()
        if "score" in d:
            d["score"] = round(float(d["score"]), 5)
        if "box" in d:
            d["box"] = [round(float(v), 3) for v in d["box"]]
        return d
    return value


def predictions() -> dict:
    import torch

    import unio
    from unio.data.shapes import ShapesWorld

    torch.set_num_threads(1)
    pipe = unio.load("shapes-demo", device="cpu")
    world = ShapesWorld(seed=SEED)
    samples = [world[i] for i in range(N)]
    images = [s["image"] for s in samples]
    first = [s["objects"][0] for s in samples]
    box = [tuple(o["box"]) for o in first]
    expr = [s["refexps"][0][0] for s in samples]
    out = {
        "caption": pipe.caption(images),
        "vqa": pipe.ask(images, [s["qa"][1][0] for s in samples]),
        "classify": pipe.classify(images),
        "detect": pipe.detect(images),
        "detect_beam": pipe.detect(images, num_beams=2, threshold=0.3),
        "ground": pipe.ground(images, expr),
        "describe_region": pipe.describe_region(images, box),
        "classify_region": pipe.classify_region(images, box),
        "segment": pipe.segment(images, expr),
        "depth": pipe.depth(images),
        "depth_codes": pipe.depth(images[0], refine=False),
        "generate_image": pipe.generate_image([s["caption"] for s in samples[:2]], seed=7, candidates=3),
        "generate_pmi": pipe.generate_image(samples[0]["caption"], seed=3, candidates=2, rerank="pmi",
                                            guidance=1),
        "inpaint": pipe.inpaint(images, box, [o["label"] for o in first], seed=5),
        "score": [round(v, 4) for v in pipe.score(images[0], [s["caption"] for s in samples])],
    }
    summary = {k: _summary(v) for k, v in out.items()}
    summary["eval"] = _evaluation(pipe)
    return json.loads(json.dumps(summary))


def _evaluation(pipe) -> dict:
    """``unio eval``'s metrics and per-example records on a few held-out samples per task."""
    import tempfile

    from unio.evaluate import evaluate
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        results = evaluate(pipe, f"shapes:{SEED}", n={"default": 3, "generate_image": 2}, batch_size=4, seed=1,
                           progress=False, options={"generate_image": {"candidates": 2}}, predictions=path)
        records = sorted((json.loads(line) for line in path.read_text().splitlines()),
                         key=lambda r: (r["task"], r["i"]))  # the task order follows the registry
    metrics = {task: {k: v for k, v in m.items() if k != "seconds"} for task, m in results.items() if task != "run"}
    return {"metrics": metrics, "records": records}


def _close(a, b, where="") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for k, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{k}]")
    elif isinstance(a, float) or isinstance(b, float):
        tol = 1.0 if ".thumb" in where else 2e-3
        if a is None or b is None or (np.isnan(float(a)) and np.isnan(float(b))):
            assert a == b or (a is not None and b is not None), f"{where}: {a} != {b}"
            return
        assert abs(float(a) - float(b)) <= tol, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_shapes_demo_predictions_are_pinned():
    _close(predictions(), json.loads(PINS.read_text()), "shapes-demo")


if __name__ == "__main__":
    if "--write" in sys.argv:
        PINS.parent.mkdir(parents=True, exist_ok=True)
        PINS.write_text(json.dumps(predictions(), indent=1) + "\n")
        print(f"wrote {PINS}")

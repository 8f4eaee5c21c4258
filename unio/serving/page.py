"""The web page ``unio serve`` and ``unio demo --web`` show at ``/``: upload an image or pick a
shapes-world sample, choose a task, fill in what the task takes, and see the answer drawn (boxes
with labels and scores, masks, depth maps, generated and inpainted pictures) beside its JSON record.

    GET /                 the page (unio/serving/web/index.html)
    GET /ui/app.js        its script and style sheet (no other files, nothing from another host)
    GET /ui/samples       a few shapes-world images, each with inputs to try on it

The page is static: it reads ``GET /v1/tasks`` for the tasks' inputs and options and sends the
same ``POST /v1/{task}`` requests as any client, so it shows exactly the records and the error
messages the API gives. These paths carry no model output, so a token does not guard them (the
page asks for the token when ``/v1`` needs one).
"""
from __future__ import annotations

import base64
import functools
import io
import json
from importlib import resources

from ..data.shapes import ShapesWorld
from ..tasks.base import box_list

try:  # the optional web stack: unio[serve]
    from starlette.responses import RedirectResponse, Response
except ImportError:  # pragma: no cover - exercised only where fastapi is missing
    Response = None

__all__ = ["add_page", "is_page_path", "sample_images", "ASSETS", "SAMPLE_SEED"]

ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
SAMPLE_SEED = 1000          # shapes world seed of the samples: unio demo's, never used in training
SAMPLES = 6


def is_page_path(path: str) -> bool:
    """Whether ``path`` is one of the page's own (answered without the token)."""
    return path in ("/", "/ui", "/ui/") or path.startswith("/ui/")


def add_page(app) -> None:
    """Route the page, its assets and its samples on ``app`` (a FastAPI app)."""

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    async def ui():
        return RedirectResponse("/", status_code=307)

    @app.get("/ui/samples", include_in_schema=False)
    async def samples():
        return Response(_samples_json(), media_type="application/json")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in ASSETS:
            return Response(json.dumps({"error": f"no page file {name!r}; the page is at /"}), status_code=404,
                            media_type="application/json")
        return Response(_asset(name), media_type=f"{ASSETS[name]}; charset=utf-8", headers={"Cache-Control": "no-cache"})


def sample_images(n: int = SAMPLES, seed: int = SAMPLE_SEED, image_size: int = 64) -> list[dict]:
    """``n`` shapes-world images as the page offers them: a name, the PNG as a data URL, and one
    value to try for each kind of input (a question, an expression, a box, a text)."""
    world, out = ShapesWorld(image_size=image_size, seed=seed), []
    for i in range(n):
        s = world[i]
        buf = io.BytesIO()
        s["image"].save(buf, "PNG")
        first = s["objects"][0]
        out.append({
            "name": f"shapes {seed}/{i}",
            "image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
            "width": s["image"].width, "height": s["image"].height,
            "alt": s["caption"],            # what the picture shows
            "inputs": {"question": s["qa"][0][0] if s["qa"] else "how many objects are there?",
                       "expression": s["refexps"][0][0] if s["refexps"] else f"the {first['label']}",
                       "box": box_list(first["box"]),
                       "text": f"a {first['label']}"},
        })
    return out


@functools.lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    return resources.files("unio.serving").joinpath("web", name).read_bytes()


@functools.lru_cache(maxsize=1)
def _samples_json() -> str:
    return json.dumps({"seed": SAMPLE_SEED, "samples": sample_images()})

"""What a request carries, read and checked before it queues, and its answer as JSON.

Nothing here knows the web framework: the app hands over the fields it read (from a multipart
form or a JSON object) and gets back the image, the task's inputs and its checked options, or an
error that says what was wrong. Nothing here knows any task either: the task's ``inputs``,
``check_options`` and ``to_record`` say what it reads and writes, so a task registered by another
package is served like the built-in ones.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.frames import evenly
from ..errors import ImageError, InputError, TaskError, UnioError
from ..images import check_box, load_image, unreadable
from ..tasks import get_task, task_names
from ..tasks.options import parse_options

__all__ = ["RequestError", "Parsed", "MAX_IMAGES", "read_fields", "decode_image", "served_task", "record_of", "inline_files",
           "jsonable", "status_of", "options_key"]

FIELDS = ("image", "images", "options", "option")   # besides the task's own inputs
MAX_IMAGES = 64   # pictures one request of a several-image task (a pair, a clip's frames) may carry


class RequestError(Exception):
    """A request the server refuses with ``status`` (413, 429, 503, 504 ...) and ``message``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, dict(headers or {})


@dataclass
class Parsed:
    """One checked request: the task, its image (RGB PIL; a list of them for a task reading several
    pictures at once; or None), inputs and options."""

    task: str
    image: Image.Image | list | None
    filename: str | None
    inputs: dict
    options: dict


def status_of(exc: UnioError) -> int:
    """The HTTP status of a unio error: bad values 422, anything else the caller's fault 400."""
    return 422 if isinstance(exc, (InputError, TaskError)) else 400


def served_task(name: str, served: list[str]):
    """The task ``name`` if the model serves it, else a 404 with the message ``unio predict`` gives."""
    if name not in task_names():
        raise RequestError(404, f"unknown task {name!r}; choose one of: {', '.join(task_names())}")
    if name not in served:
        raise RequestError(404, f"this model has no task {name!r}; it serves: {', '.join(served)}")
    return get_task(name)


def read_fields(task, fields: dict[str, Any], *, image: bytes | None, filename: str | None,
                max_pixels: int, from_json: bool) -> Parsed:
    """The request's fields (inputs, ``options``, ``option`` KEY=VALUE strings) -> a checked Parsed request.

    ``image`` holds the uploaded file's bytes (multipart); in JSON the ``image`` field holds them
    base64-encoded (a ``data:image/...;base64,`` prefix is allowed). A task reading several pictures
    at once (``num_images`` != 1: a pair, a clip's frames) takes them as repeated file parts
    ``image`` (in order) or JSON ``"images": ["<base64>", ...]``.
    """
    allowed = set(FIELDS) | set(task.inputs)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        takes = (["image"] if task.needs_image else []) + list(task.inputs) + ["options"]
        raise InputError(f"{task.name} takes no {', '.join(unknown)}; it takes: {', '.join(takes)}")
    if task.needs_image and task.num_images != 1:
        return _several(task, fields, image, filename, max_pixels, from_json)
    if isinstance(image, list) or fields.get("images") is not None:
        raise InputError(f"{task.name} reads one image; send one file field 'image'")
    if from_json and fields.get("image") is not None:
        image = _b64(fields["image"], "image")
    elif not from_json and isinstance(fields.get("image"), str) and fields["image"].strip():
        raise InputError("send the image as a file part (curl -F image=@photo.jpg), or base64 in a JSON body")
    pil = None
    if task.needs_image:
        if not image:
            raise InputError(f"{task.name} needs an image: a multipart file field 'image' "
                             "(curl -F image=@photo.jpg) or JSON {\"image\": \"<base64>\"}")
        pil = decode_image(image, max_pixels)
    elif image:
        raise InputError(f"{task.name} makes its answer from {task.text_input} alone; send no image")
    return Parsed(task.name, pil, filename, _inputs(task, fields), _options(task, fields, from_json))


def _inputs(task, fields: dict) -> dict:
    """The task's own inputs (question, expression, box, ...), each checked."""
    inputs = {}
    for name in task.inputs:
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{task.name} needs {name}" + (" (x1,y1,x2,y2 in pixels of the image)" if name == "box" else ""))
        inputs[name] = _box(value) if name == "box" else _text(name, value)
    return inputs


def _several(task, fields: dict, image, filename, max_pixels: int, from_json: bool) -> Parsed:
    """A request of a task that reads several pictures at once (a pair, the frames of a clip)."""
    if from_json:
        raw = fields.get("images", fields.get("image"))
        raw = [] if raw is None else raw if isinstance(raw, list) else [raw]
        blobs = [_b64(x, f"images[{i}]") for i, x in enumerate(raw)]
    else:
        blobs = image if isinstance(image, list) else [image] if image else []
    want = task.num_images
    if not blobs:
        raise InputError(f"{task.name} needs {want or 'the frames of a clip as'} images: repeated file fields "
                         "'image' in order (curl -F image=@left.png -F image=@right.png) or JSON "
                         "{\"images\": [\"<base64>\", ...]}")
    if len(blobs) > MAX_IMAGES:
        raise RequestError(413, f"{len(blobs)} images in one request; this server takes at most {MAX_IMAGES}")
    if want is not None and len(blobs) != want:
        raise InputError(f"{task.name} reads {want} images per request, got {len(blobs)}; send them in order")
    pictures = [decode_image(b, max_pixels) for b in blobs]
    options = _options(task, fields, from_json)
    if want is None:
        if len({p.size for p in pictures}) > 1:
            raise InputError(f"the frames of one clip must share one size, got {sorted({p.size for p in pictures})}")
        pictures = [pictures[i] for i in evenly(len(pictures), task.frames(options))]  # as unio predict reads a clip
    return Parsed(task.name, pictures, filename, _inputs(task, fields), options)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Uploaded bytes -> RGB PIL image; ImageError when unreadable, 413 when it has too many pixels."""
    if not data:
        raise ImageError("the image is empty (0 bytes); send a PNG, JPEG, ... file")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise RequestError(413, f"the image has more pixels than this server takes ({max_pixels}); "
                                "send a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise unreadable("the uploaded file", exc) from None
    w, h = im.size
    if w * h > max_pixels:
        raise RequestError(413, f"the image is {w}x{h} = {w * h} pixels; this server takes at most {max_pixels} "
                                "(--max-pixels); send a smaller image")
    try:
        im.load()
        return load_image(im)
    except (OSError, ValueError, SyntaxError) as exc:
        raise unreadable("the uploaded file", exc) from None


def options_key(task, options: dict) -> tuple:
    """Jobs batch only with jobs of the same key. A seeded sampler draws from one generator for a
    whole batch, so a request with a ``seed`` gets a batch of its own: the same seed then draws
    the same picture as ``pipe.run`` does."""
    text = json.dumps(jsonable(options), sort_keys=True)
    return (task.name, text, object()) if options.get("seed") is not None else (task.name, text)


def record_of(task, result, inputs: dict) -> dict:
    """``task.to_record`` (the record ``unio predict`` writes), with the files it writes inlined
    as base64 (depth ``.npy``/``.png``, generated and inpainted ``.png``). Each answer gets its own
    folder, made only by a task that writes files, and removed after."""
    folder = _scratch() / uuid.uuid4().hex
    try:
        rec = task.to_record(result, inputs, folder, "answer")
        return jsonable(inline_files(rec, folder))
    finally:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)


def inline_files(value, folder: Path):
    """Every string of ``value`` naming a file under ``folder`` replaced by the file's bytes, base64."""
    if isinstance(value, dict):
        return {k: inline_files(v, folder) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [inline_files(v, folder) for v in value]
    if isinstance(value, (str, Path)):
        path = Path(value)
        if path.is_absolute() and path.is_relative_to(folder) and path.is_file():
            return base64.b64encode(path.read_bytes()).decode("ascii")
    return value


def jsonable(value):
    """JSON-ready data: numpy scalars and arrays as Python, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------- helpers
_SCRATCH: list[tempfile.TemporaryDirectory] = []
_SCRATCH_LOCK = threading.Lock()


def _scratch() -> Path:
    """One temporary folder per process for the files records write (removed at exit)."""
    with _SCRATCH_LOCK:
        if not _SCRATCH:
            _SCRATCH.append(tempfile.TemporaryDirectory(prefix="unio-serve-"))
        return Path(_SCRATCH[0].name)


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise ImageError(f"the {what} field must be a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"the {what} field is not valid base64; encode the file's bytes "
                         "(base64 -w0 photo.jpg)") from None


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {json.dumps(jsonable(value))[:80]}")
    return value


def _box(value) -> tuple[float, float, float, float]:
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        try:
            value = [float(v) for v in text.replace(" ", ",").split(",") if v]
        except ValueError:
            raise InputError(f"box must be four numbers x1,y1,x2,y2 in pixels, got {value!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise InputError(f"box must be four numbers [x1, y1, x2, y2] in pixels, got {value!r:.80}")
    return check_box(value)


def _options(task, fields: dict, from_json: bool) -> dict:
    raw = fields.get("options") or {}
    if isinstance(raw, str):   # a multipart field holds JSON text
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(f"options must be a JSON object, e.g. {{\"num_beams\": 3}}; got {raw!r:.80}") from None
    if not isinstance(raw, dict):
        raise InputError(f"options must be a JSON object, e.g. {{\"num_beams\": 3}}; got {raw!r:.80}")
    items = fields.get("option") or []
    if from_json and items:
        raise InputError("in JSON give options as {\"options\": {\"KEY\": value}}")
    parsed = parse_options([items] if isinstance(items, str) else list(items))
    other = sorted(t for t in parsed if t not in (None, task.name))
    if other:
        raise InputError(f"option names task {other[0]!r}, but this request is for {task.name}; drop the "
                         f"'{other[0]}.' prefix or send it to /v1/{other[0]}")
    merged = {**parsed.get(None, {}), **parsed.get(task.name, {}), **raw}
    return task.check_options({k: v for k, v in merged.items() if v is not None})

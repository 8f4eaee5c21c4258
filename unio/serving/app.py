"""The ASGI app: ``create_app(pipe, **limits)`` (FastAPI on Starlette; ``pip install "unio[serve]"``).

    POST /v1/{task}        an image (multipart file ``image``, or JSON ``{"image": "<base64>"}``), the
                           task's inputs and ``options`` -> the JSON record ``unio predict`` writes
                           (``?format=coco``: COCO results, for detect)
    GET  /v1/tasks         the model's tasks with their inputs and options
    GET  /                 a web page to try every task by hand (:mod:`.page`)
    GET  /health           liveness;  GET /ready: the model is loaded;  GET /metrics: Prometheus text

Requests are checked on the event loop (a bad one never reaches the model), then queued for the
worker thread. By default (``batching="step"``, :class:`~unio.serving.batcher.StepBatcher`) a
greedy request joins the decoding batch at the next step whatever its task and leaves it with its
answer when its own rows end; the others run as a ``pipe.run`` batch between two steps. With
``batching="call"`` (:class:`~unio.serving.batcher.Batcher`) requests arriving within a window
share one ``pipe.run`` per task and options (``pipe.run_many`` for a batch mixing tasks).
Every error is a JSON ``{"error": message}`` with a 4xx status (5xx only for the server's own
faults), never a traceback.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import asdict, dataclass

import torch

from .. import __version__
from ..errors import UnioError
from ..tasks import get_task
from ..batching import Stream
from .batcher import MIXED, Batcher, Job, QueueFull, StepBatcher
from .inputs import MAX_IMAGES, RequestError, jsonable, options_key, read_fields, record_of, served_task, status_of
from .metrics import CONTENT_TYPE, Metrics
from .page import add_page, is_page_path

try:  # the optional web stack: unio[serve]
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
except ImportError:  # pragma: no cover - exercised only where fastapi is missing
    FastAPI = None

__all__ = ["create_app", "Limits", "require_web_stack"]

log = logging.getLogger("unio.serve")
OPEN_PATHS = ("/health", "/ready")      # answered without the token (probes)
INSTALL = 'pip install "unio[serve]"'


@dataclass(frozen=True)
class Limits:
    """What one server accepts; ``unio serve``'s flags of the same names."""

    max_batch: int = 16               # requests per model call
    max_wait_ms: float = 10.0         # how long the first request of a batch waits for others
    max_queue: int = 256              # requests waiting beyond it get 429
    timeout: float = 60.0             # seconds from arrival to answer, else 504
    max_upload_mb: float = 20.0       # request body, else 413
    max_pixels: int = 4096 * 4096     # of the decoded image, else 413
    token: str | None = None          # bearer token every /v1 and /metrics request must carry
    threads: int | None = None        # torch CPU threads of the worker (None: torch's choice)
    mix_tasks: bool = False           # batching="call": greedy requests of any tasks share a model call
    batching: str = "step"            # "step": requests join the decoding batch at any step; "call": per call

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise UnioError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("timeout", "max_upload_mb"):
            if not float(getattr(self, name)) > 0:
                raise UnioError(f"{name} must be above 0, got {getattr(self, name)}")
        if self.batching not in ("step", "call"):
            raise UnioError(f"batching must be step or call, got {self.batching!r}")
        if float(self.max_wait_ms) < 0:
            raise UnioError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def require_web_stack() -> None:
    if FastAPI is None:
        raise UnioError(f"unio serve needs FastAPI and uvicorn, which are not installed; run: {INSTALL}")


def create_app(pipe, **limits):
    """The ASGI app serving ``pipe`` (a :class:`~unio.pipeline.Pipeline`, or a function returning
    one, called in the worker thread at start-up: ``/ready`` says when it is done).

    ``limits`` are the fields of :class:`Limits`. ``app.state.batcher.batch_sizes`` records the size
    of every model call; ``app.state.metrics`` the counters ``/metrics`` shows.
    """
    require_web_stack()
    unknown = sorted(set(limits) - set(Limits.__dataclass_fields__))
    if unknown:
        raise UnioError(f"create_app takes no {', '.join(unknown)}; its limits: {', '.join(Limits.__dataclass_fields__)}")
    lim = Limits(**limits)
    metrics = Metrics()
    state = _State(pipe, lim)
    if lim.batching == "step":
        batcher = StepBatcher(state.stream, state.joins, state.run_batch, max_batch=lim.max_batch,
                              max_queue=lim.max_queue, on_batch=metrics.batch)
    else:
        batcher = Batcher(state.run_batch, max_batch=lim.max_batch, max_wait=lim.max_wait_ms / 1000,
                          max_queue=lim.max_queue, on_batch=metrics.batch)
    state.batcher = batcher
    metrics.queue_length = lambda: batcher.queue_length
    metrics.ready = lambda: state.pipe is not None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        yield
        await batcher.stop()

    app = FastAPI(title="unio serve", version=__version__, lifespan=lifespan,
                  description="Unified seq2seq vision-language model over HTTP, with dynamic batching.")
    app.state.batcher, app.state.metrics, app.state.limits = batcher, metrics, lim
    app.state.unio = state

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):      # 404 for an unknown path, 405 ...: JSON like the rest
        return _json({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, exc):    # a bug of ours: logged, answered without a traceback
        log.exception("unhandled error on %s", request.url.path)
        return _json({"error": f"internal server error ({type(exc).__name__}); see the server's log"}, 500)

    @app.get("/health")
    async def health():
        return _json({"status": "ok"})

    @app.get("/ready")
    async def ready():
        state.start()
        if state.pipe is None:
            reason = f"the model failed to load: {state.error}" if state.error else "the model is loading"
            return _json({"ready": False, "error": reason}, 503)
        return _json({"ready": True, "model": getattr(state.pipe, "meta", {}).get("path"), "tasks": state.served})

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/tasks")
    async def tasks():
        state.start()
        if state.pipe is None:
            return _json({"error": "the model is loading; retry when /ready says so"}, 503)
        return _json({"tasks": [_describe(name, state.pipe) for name in state.served]})

    add_page(app)

    @app.post("/v1/{task}")
    async def predict(task: str, request: Request):
        t0 = time.monotonic()
        label = task if task in state.served else "_unknown"
        headers = None
        try:
            status, payload = 200, await _predict(state, task, request)
        except asyncio.CancelledError:          # the client went away; its batch goes on
            metrics.request(label, 499, time.monotonic() - t0)
            raise
        except RequestError as exc:
            status, payload, headers = exc.status, {"error": exc.message}, exc.headers
        except UnioError as exc:
            status, payload = status_of(exc), {"error": str(exc)}
        except Exception as exc:
            log.exception("error while answering %s", task)
            status, payload = 500, {"error": f"internal server error while running {task} "
                                             f"({type(exc).__name__}); see the server's log"}
        metrics.request(label, status, time.monotonic() - t0)
        return _json(payload, status, headers)

    if lim.token:
        app.add_middleware(_BearerAuth, token=lim.token, metrics=metrics, state=state)
    return app


class _State:
    """The model (or its loader), the tasks it serves and the worker's function."""

    def __init__(self, pipe, limits: Limits):
        self.loader = pipe if callable(pipe) else None
        self.pipe = None if callable(pipe) else pipe
        self.served: list[str] = list(self.pipe.tasks) if self.pipe is not None else []
        self.limits, self.error, self.batcher = limits, None, None
        self._loading: asyncio.Future | None = None
        self._threads_set = False

    def start(self) -> None:
        """Start the scheduler and, once, the model's loading (lifespan, or the first request)."""
        self.batcher.ensure_started()
        if not self._threads_set and self.limits.threads:
            self._threads_set = True
            self.batcher.call(self._set_threads)
        if self.pipe is None and self.loader is not None and self._loading is None:
            self._loading = asyncio.ensure_future(self._load())

    def _set_threads(self) -> None:
        if self.limits.threads:
            torch.set_num_threads(int(self.limits.threads))

    async def _load(self) -> None:
        try:
            pipe = await self.batcher.call(self.loader)
        except Exception as exc:
            self.error = str(exc) if isinstance(exc, UnioError) else f"{type(exc).__name__}: {exc}"
            log.error("unio serve: the model failed to load: %s", self.error)
            return
        self.pipe, self.served = pipe, list(pipe.tasks)

    def stream(self):
        """In the worker thread: the stream step batching decodes in (None: this backend cannot step)."""
        return Stream(self.pipe, max_rows=self.limits.max_batch, parse_later=True) if Stream.runs_on(self.pipe) else None

    def joins(self, job: Job) -> bool:
        return self.pipe.shares_decoding(job.task, job.options)

    def run_batch(self, jobs: list[Job]) -> list:
        """In the worker thread: one ``pipe.run`` for a batch of one task and options, one
        ``pipe.run_many`` for a mixed one; if it fails, each job alone, so that one request's
        failure is its own."""
        try:
            return list(self._run(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
        out = []
        for job in jobs:
            try:
                out.append(self._run([job])[0])
            except Exception as exc:
                out.append(exc)
        return out

    def _run(self, jobs: list[Job]) -> list:
        if any(j.key != jobs[0].key for j in jobs):
            return self.pipe.run_many([j.request() for j in jobs], batch_size=len(jobs))
        task = get_task(jobs[0].task)
        images = [j.image for j in jobs] if task.needs_image else None
        inputs = {name: [j.inputs[name] for j in jobs] for name in task.inputs}
        return self.pipe.run(task.name, images, batch_size=len(jobs), **inputs, **jobs[0].options)


async def _predict(state: _State, name: str, request: Request) -> dict:
    lim = state.limits
    state.start()
    if state.pipe is None:
        raise RequestError(503, "the model is loading; retry when /ready says so", {"Retry-After": "5"})
    task = served_task(name, state.served)
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "coco"):
        raise RequestError(422, f"format must be json or coco, got {fmt!r}")
    if fmt == "coco" and not hasattr(task, "coco_results"):
        raise RequestError(422, f"format=coco is for detect results only, not {task.name}; leave format out")
    body = await _read_body(request, lim.max_bytes)
    fields, image, filename, from_json = await _fields(request, body)
    parsed = await asyncio.to_thread(read_fields, task, fields, image=image, filename=filename,
                                     max_pixels=lim.max_pixels, from_json=from_json)
    key = options_key(task, parsed.options)
    job = Job(task.name, key, parsed.image, parsed.inputs, parsed.options,
              pool=MIXED if lim.mix_tasks and state.pipe.shares_decoding(task.name, parsed.options) else key)
    try:
        future = state.batcher.submit(job)
    except QueueFull as exc:
        raise RequestError(429, str(exc), {"Retry-After": "1"}) from None
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({future, gone}, timeout=lim.timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:   # the server cancelled this request (its client went away)
        future.cancel()
        raise
    finally:
        gone.cancel()
    if future not in done:   # out of the queue, or its answer dropped when its batch is running
        future.cancel()
        if gone in done:
            raise RequestError(499, "the client disconnected before the answer")  # nginx's 499: no one reads it
        raise RequestError(504, f"no answer within {lim.timeout:g} s (the server is busy); retry later, "
                                "or start the server with a longer --timeout")
    result = future.result()
    rec = await asyncio.to_thread(record_of, task, result, parsed.inputs)
    head = {"task": task.name}
    if filename:
        head["image"] = filename
    if isinstance(parsed.image, list):  # a pair, a clip: the size of its first picture, and how many
        head.update(width=parsed.image[0].width, height=parsed.image[0].height, images=len(parsed.image))
    elif parsed.image is not None:
        head.update(width=parsed.image.width, height=parsed.image.height)
    record = {**head, **rec}
    if fmt == "coco":
        results, categories = task.coco_results([{**record, "image": filename or "image"}],
                                                state.pipe.classes.get("object") or [])
        return {"results": results, "categories": categories}
    return record


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond; the rest is read and dropped, up to
    a bound, so that the client, still sending, gets the answer rather than a reset)."""
    too_big = RequestError(413, f"the request is larger than this server takes ({limit / 2**20:g} MiB, "
                                "--max-upload-mb); send a smaller image")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max(4 * limit, 64 * 2**20):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > max(4 * limit, 64 * 2**20):
            break
    if size > limit:
        raise too_big
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the server's ``http.disconnect``; the body is read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _fields(request: Request, body: bytes) -> tuple[dict, bytes | None, str | None, bool]:
    """(fields, image bytes, file name, from_json) of a form (multipart, or urlencoded for tasks
    without an image) or a JSON object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive=replay).form(max_files=MAX_IMAGES, max_fields=64)
        except Exception as exc:
            raise RequestError(422, f"could not read the multipart form ({getattr(exc, 'detail', exc)}); "
                                    "send one file field 'image' and text fields") from None
        fields, image, filename = {}, None, None
        for key, value in form.multi_items():
            if hasattr(value, "read"):          # an uploaded file; repeated for a pair or a clip's frames
                if key != "image":
                    raise RequestError(422, f"unexpected file field {key!r}; send the image as 'image'")
                data = await value.read()
                if image is None:
                    image, filename = data, value.filename or None
                else:
                    image = (image if isinstance(image, list) else [image]) + [data]
                continue
            if key == "option":
                fields.setdefault("option", []).append(value)
            else:
                fields[key] = value
        await form.close()
        return fields, image, filename, False
    if ctype in ("application/json", "") or ctype.endswith("+json"):
        try:
            fields = json.loads(body) if body else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(422, f"the body is not valid JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise RequestError(422, "the JSON body must be an object: {\"image\": \"<base64>\", ...}")
        return fields, None, None, True
    raise RequestError(415, f"content type {ctype!r} is not read here; send multipart/form-data "
                            "(curl -F image=@photo.jpg) or application/json")


def _describe(name: str, pipe) -> dict:
    task = get_task(name)
    options = {}
    for key, opt in task.option_specs().items():
        spec = {k: v for k, v in asdict(opt).items() if v is not None and v != ""}
        spec["type"] = opt.type if isinstance(opt.type, str) else opt.type.__name__
        options[key] = spec
    return jsonable({"name": name, "needs_image": task.needs_image, "num_images": task.num_images,
                     "inputs": list(task.inputs),
                     "text_input": task.text_input, "writes_image": task.writes_image,
                     "formats": ["json", "coco"] if hasattr(task, "coco_results") else ["json"],
                     "options": options, "task_options": list(task.options), "prompt": _canonical(pipe, name),
                     "model_defaults": pipe.task_defaults.get(name, {})})


def _canonical(pipe, name: str) -> str | None:
    """The prompt template the model uses for task ``name`` unless the caller gives one."""
    prompts = getattr(getattr(pipe, "ctx", None), "prompts", None)
    return prompts.canonical(name) if prompts is not None and name in prompts else None


class _BearerAuth:
    """Pure ASGI middleware: every path but the probes and the page's own files (no model output
    there) needs ``Authorization: Bearer <token>``."""

    def __init__(self, app, token: str, metrics: Metrics, state: _State):
        self.app, self.token, self.metrics, self.state = app, token.encode(), metrics, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or is_page_path(scope["path"]):
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        scheme, _, value = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token):
            return await self.app(scope, receive, send)
        parts = scope["path"].split("/")
        task = parts[2] if len(parts) > 2 and parts[1] == "v1" else ""
        self.metrics.request(task if task in self.state.served else "_unknown", 401)
        response = _json({"error": "this server needs a token: send the header 'Authorization: Bearer <token>'"},
                         401, {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _json(payload, status: int = 200, headers: dict | None = None) -> "Response":
    return Response(json.dumps(jsonable(payload)), status_code=status, headers=headers,
                    media_type="application/json")

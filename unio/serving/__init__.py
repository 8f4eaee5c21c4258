"""``unio serve``: the model over HTTP for many users at once, with dynamic batching.

    >>> from unio.serving import create_app
    >>> app = create_app(unio.load("shapes-demo"), max_batch=16)   # any ASGI server

By default a greedy request joins the running decoding batch at the next step and leaves it with
its answer (``batching="step"``: :class:`.batcher.StepBatcher` over :class:`unio.batching.Stream`);
with ``batching="call"``, requests for the same task with the same options that arrive within
``max_wait_ms`` share one ``pipe.run`` (:class:`.batcher.Batcher`). The requests are read and checked before they queue
(:mod:`.inputs`), answered with the records ``unio predict`` writes (:mod:`.app`), counted for
Prometheus (:mod:`.metrics`), and served by uvicorn on 127.0.0.1 unless a token guards them
(:mod:`.server`). The web stack is optional: ``pip install "unio[serve]"``.
"""
from .app import Limits, create_app
from .batcher import Batcher, Job, QueueFull, StepBatcher
from .inputs import inline_files, record_of
from .server import check_bind, is_loopback, resolve_token, serve

__all__ = ["create_app", "Limits", "serve", "Batcher", "StepBatcher", "Job", "QueueFull", "record_of", "inline_files",
           "check_bind", "is_loopback", "resolve_token"]

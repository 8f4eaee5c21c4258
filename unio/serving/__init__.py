"""``unio serve``: the model over HTTP for many users at once, with dynamic batching.

    >>> from unio.serving import create_app
    >>> app = create_app(unio.load("shapes-demo"), max_batch=16, max_wait_ms=10)   # any ASGI server

Requests for the same task with the same options that arrive within ``max_wait_ms`` share one
``pipe.run`` (:mod:`.batcher`); the requests are read and checked before they queue
(:mod:`.inputs`), answered with the records ``unio predict`` writes (:mod:`.app`), counted for
Prometheus (:mod:`.metrics`), and served by uvicorn on 127.0.0.1 unless a token guards them
(:mod:`.server`). The web stack is optional: ``pip install "unio[serve]"``.
"""
from .app import Limits, create_app
from .batcher import Batcher, Job, QueueFull
from .inputs import inline_files, record_of
from .server import check_bind, is_loopback, resolve_token, serve

__all__ = ["create_app", "Limits", "serve", "Batcher", "Job", "QueueFull", "record_of", "inline_files",
           "check_bind", "is_loopback", "resolve_token"]

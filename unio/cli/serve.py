"""``unio serve --model M [--host 127.0.0.1 --port 8000 --max-batch 16 --max-wait-ms 10 --max-queue 256
--timeout 60 --max-upload-mb 20 --max-pixels N --token T --threads N --device D --batching step|call --mix-tasks]``.

Loads the model (an export directory or a shipped model's name), then serves it over HTTP with
dynamic batching until interrupted (see :mod:`unio.serving`), with a page to try it at ``/``
(``unio demo --web`` is the same server on the shipped shapes-demo model). Everything that can be checked
before the model loads is: where it may listen (a host beyond this machine needs a token), the
limits, and that the web stack is installed.
"""
from __future__ import annotations

import socket
import sys

import torch

import unio

from ..errors import UnioError
from ..export import export_path
from ..serving import Limits, check_bind, resolve_token, serve
from ..serving.server import require_web_stack


def main(args) -> int:
    limits = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                  timeout=args.timeout, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                  mix_tasks=args.mix_tasks, batching=args.batching)
    run(args.model, args.host, args.port, token=args.token, device=args.device, threads=args.threads,
        log_level=args.log_level, backend=getattr(args, "backend", "torch"), **limits)
    return 0


def run(model, host: str = "127.0.0.1", port: int = 8000, *, token: str | None = None, device=None,
        threads: int | None = None, log_level: str = "info", announce=None, backend: str = "torch",
        **limits) -> None:
    """Check what can be checked, load ``model`` and serve it (the API and the page at ``/``) until
    interrupted. ``announce(url, pipe)``, when given, is called once the model is loaded."""
    token = resolve_token(token)
    check_bind(host, token)
    require_web_stack()
    limits = {**limits, "token": token, "threads": threads}
    lim = Limits(**limits)                 # a bad limit fails before the model loads
    _check_port(host, port)
    path = export_path(model)              # an unknown model name fails here, in a second
    if threads:
        torch.set_num_threads(int(threads))
    pipe = unio.load(path, device=device, backend=backend)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"unio serve: {path} ({', '.join(pipe.tasks)}) on {url} (batches of up to {lim.max_batch}, "
          f"{lim.max_wait_ms:g} ms window{', token required' if token else ''}; a page to try it: {url}/)",
          file=sys.stderr)
    if announce is not None:
        announce(f"{url}/", pipe)
    serve(pipe, host, port, log_level=log_level, **limits)


def _check_port(host: str, port: int) -> None:
    """The address can be listened on (before the model takes seconds to load)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as exc:
        raise UnioError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                        "or stop what uses it") from None

"""``unio serve --model M [--host 127.0.0.1 --port 8000 --max-batch 16 --max-wait-ms 10 --max-queue 256
--timeout 60 --max-upload-mb 20 --max-pixels N --token T --threads N --device D]``.

Loads the model (an export directory or a shipped model's name), then serves it over HTTP with
dynamic batching until interrupted (see :mod:`unio.serving`). Everything that can be checked
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
    token = resolve_token(args.token)
    check_bind(args.host, token)
    require_web_stack()
    limits = dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                  timeout=args.timeout, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                  token=token, threads=args.threads)
    Limits(**limits)                       # a bad limit fails before the model loads
    _check_port(args.host, args.port)
    path = export_path(args.model)         # an unknown model name fails here, in a second
    if args.threads:
        torch.set_num_threads(int(args.threads))
    pipe = unio.load(path, device=args.device)
    print(f"unio serve: {path} ({', '.join(pipe.tasks)}) on http://{args.host}:{args.port} "
          f"(batches of up to {args.max_batch}, {args.max_wait_ms:g} ms window"
          f"{', token required' if token else ''})", file=sys.stderr)
    serve(pipe, args.host, args.port, log_level=args.log_level, **limits)
    return 0


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

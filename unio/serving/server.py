"""Running the app under uvicorn, and the rules of where it may listen.

The server binds 127.0.0.1 unless told otherwise. Listening on any other address exposes the
model to the network, so it then needs a bearer token (``--token`` or ``UNIO_SERVE_TOKEN``) and
refuses to start without one.
"""
from __future__ import annotations

import ipaddress
import logging
import os

from ..errors import UnioError
from .app import INSTALL, create_app
from .app import require_web_stack as require_fastapi

try:  # the optional web stack: unio[serve]
    import uvicorn
except ImportError:  # pragma: no cover - exercised only where uvicorn is missing
    uvicorn = None

__all__ = ["serve", "check_bind", "resolve_token", "is_loopback", "require_web_stack", "TOKEN_ENV"]

TOKEN_ENV = "UNIO_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only answers this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None) -> str | None:
    """``--token``, else the environment's ``UNIO_SERVE_TOKEN``, else None; an empty one is an error."""
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise UnioError(f"the token is empty; give a non-empty --token or {TOKEN_ENV}, or neither")
    return token.strip() if token is not None else None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise UnioError(f"--host {host} would let anyone who can reach this machine use the model; give a "
                        f"token (--token SECRET or {TOKEN_ENV}=SECRET; clients then send 'Authorization: "
                        "Bearer SECRET'), or listen on 127.0.0.1 (the default) behind your own proxy")


def require_web_stack() -> None:
    """FastAPI and uvicorn are importable, else a UnioError naming the install command."""
    require_fastapi()
    if uvicorn is None:
        raise UnioError(f"unio serve needs uvicorn, which is not installed; run: {INSTALL}")


def serve(pipe, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", **limits) -> None:
    """Serve ``pipe`` (a Pipeline or a function returning one) until interrupted (Ctrl-C, SIGTERM)."""
    require_web_stack()
    check_bind(host, limits.get("token"))
    app = create_app(pipe, **limits)
    logging.getLogger("unio.serve").setLevel(log_level.upper())
    config = uvicorn.Config(app, host=host, port=int(port), log_level=log_level, workers=1,
                            timeout_graceful_shutdown=5, server_header=False)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise UnioError(f"could not listen on {host}:{port} (is the port in use? see the log above); "
                        "choose another --port")

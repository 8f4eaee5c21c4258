"""Where the data shipped with unio lives: prompts/, tokenizers/, recipes/, models/.

In a source checkout (editable install) these are the top-level folders of the repository;
in a wheel they are packaged under ``unio/_data/`` (see pyproject.toml, hatch force-include).
"""
from __future__ import annotations

import importlib
import os
from importlib import resources
from pathlib import Path

from .errors import UnioError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_path(*parts: str) -> Path:
    """Path of a shipped data file or folder, e.g. ``data_path("tokenizers", "shapes")``."""
    packaged = Path(str(resources.files("unio"))) / "_data"
    for root in (packaged, _REPO_ROOT):
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
    raise UnioError(
        f"shipped data {'/'.join(parts)!r} was not found under {packaged} or {_REPO_ROOT}; "
        "reinstall unio (pip install .) or run from a complete source checkout"
    )


def default_file_mode(path) -> None:
    """Give a written file the permissions a plain ``open(path, "w")`` would have.

    safetensors (0.8) writes through a private temporary file, so weights come out readable by
    their owner only (0600) whatever the umask; an export in a shared models folder should be
    readable like its config.json beside it.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def lazy_exports(package: str, exports: dict[str, str], names: dict):
    """``(__getattr__, __dir__)`` for a package whose public names are imported on first use:
    ``exports`` maps a name to the module (relative to ``package``) that defines it, so importing
    the package loads none of them (``import unio`` and ``unio --help`` stay fast)."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(names) | set(exports))

    return __getattr__, __dir__

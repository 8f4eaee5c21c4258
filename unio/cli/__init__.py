"""The ``unio`` command (also ``python -m unio``): the parser in :mod:`.main`, one module per
subcommand that does more than call a library function (predict, demo, shapes)."""
from .main import build_parser, main

__all__ = ["main", "build_parser"]

"""Data specs: the one-string (or one-entry) way to name a dataset, as ``unio eval --data``,
``unio tokenizer image --data`` and recipes' entries take it.

    >>> parse_data_spec("shapes:1")                        # {"source": "shapes", "seed": 1}
    >>> parse_data_spec("coco:images=val2017,instances=instances_val2017.json")
    >>> source, entry = open_data("eval.jsonl")            # the opened reader and its entry
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError
from .formats import SOURCES, open_source, source_keys

__all__ = ["parse_data_spec", "open_data", "parse_value", "spec_text"]

# procedural worlds: the bare value is the seed (default 1)
_SEEDED = ("shapes", "fashion-scenes", "shapes-pairs", "shapes-clips")


def parse_value(text: str):
    """A KEY=VALUE value as YAML scalars read: true/false, int, float, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_data_spec(spec) -> dict:
    """A data spec -> a data entry as recipes write it (what ``open_source`` reads).

    Accepted:

    - ``shapes:SEED`` (the held-out shapes world; training recipes use seed 0), optionally with
      options: ``shapes:7,image_size=96,max_objects=6``;
    - ``fashion-scenes:SEED`` (scenes of Fashion-MNIST's test photos, unio.data.fashion; training
      recipes name ``split: train``), with options as above: ``fashion-scenes:1,image_size=256``;
    - ``shapes-pairs:SEED`` (image pairs with true / false statements, unio.data.shapes_pairs) and
      ``shapes-clips:SEED`` (clips where one object acts, unio.data.shapes_clips), with options as
      above: ``shapes-clips:1,frames=6``;
    - a JSONL manifest path (``eval.jsonl``, read by the training reader ``JsonlSource``);
    - ``SOURCE:VALUE,key=value,...`` for any reader of :mod:`unio.data.formats`: the bare VALUE
      fills the reader's one required key (``classes:DIR``, ``jsonl:PATH,root=DIR``), the others
      are named (``coco:images=DIR,instances=FILE``, ``vqa:images=...,questions=...,annotations=...``);
    - a YAML or JSON file holding one data entry (``{source: coco, images: ..., n: 500}``) or a
      recipe, whose single ``data.eval`` entry is used;
    - a dict (a data entry itself).
    """
    if isinstance(spec, dict):
        if "source" not in spec:
            raise DataError(f"data entry {spec} has no 'source'; use one of {sorted(SOURCES)}")
        return dict(spec)
    if isinstance(spec, (list, tuple)):
        if len(spec) != 1:
            raise DataError(f"evaluate reads one data source at a time, got {len(spec)} entries; "
                            "evaluate them one by one")
        return parse_data_spec(spec[0])
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise DataError(f"the data spec must be a string such as 'shapes:1' or 'eval.jsonl', got {spec!r}")
    text = str(spec).strip()
    name, sep, rest = text.partition(":")
    suffix = Path(text).suffix.lower()
    if not (sep and name in SOURCES) and suffix == ".jsonl":
        return {"source": "jsonl", "path": text}
    if not (sep and name in SOURCES) and suffix in (".yaml", ".yml", ".json"):
        return _spec_file(Path(text))
    if not sep or name not in SOURCES:
        raise DataError(f"cannot read the data spec {text!r}; use shapes:SEED (e.g. shapes:1), a .jsonl manifest, "
                        f"a .yaml data entry, or SOURCE:VALUE,key=value with SOURCE one of {sorted(SOURCES)}")
    required = source_keys(name)[0]
    entry: dict[str, Any] = {"source": name}
    for k, part in enumerate(p.strip() for p in rest.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if eq:
            entry[key.strip()] = parse_value(value.strip())
            continue
        positional = "seed" if name in _SEEDED else (required[0] if len(required) == 1 else None)
        if k != 0 or positional is None:
            raise DataError(f"in the data spec {text!r}, {part!r} needs a key (key=value); the {name} source takes "
                            f"{', '.join(required) or 'options'} as key=value")
        entry[positional] = parse_value(part) if positional == "seed" else part
    if name in _SEEDED:
        entry.setdefault("seed", 1)
        if not isinstance(entry["seed"], int) or isinstance(entry["seed"], bool) or entry["seed"] < 0:
            raise DataError(f"the {name} seed in {text!r} must be an integer >= 0, e.g. {name}:1")
    if name == "fashion-scenes":
        entry.setdefault("split", "test")  # a spec evaluates: scenes of the held-out test photos
    return entry


def _spec_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"data spec file {path} does not exist; give a data entry file, a .jsonl manifest or "
                        "shapes:SEED")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError
        raise DataError(f"could not read the data spec file {path}: {exc}") from None
    if isinstance(data, dict) and "source" not in data and isinstance(data.get("data"), dict):
        evals = data["data"].get("eval")
        if not evals:
            raise DataError(f"the recipe {path} has no data.eval entry to evaluate on")
        return parse_data_spec(evals)
    if isinstance(data, (dict, list)):
        return parse_data_spec(data)
    raise DataError(f"{path} holds no data entry; write e.g. {{source: jsonl, path: eval.jsonl}}")


def open_data(spec):
    """(source, entry): the opened reader for a data spec (see :func:`parse_data_spec`)."""
    entry = parse_data_spec(spec)
    return open_source(entry), entry


def spec_text(spec, entry: dict) -> str:
    return spec if isinstance(spec, str) else json.dumps(entry, sort_keys=True, default=str)

"""Decoding options: typed, with defaults, checked before the model runs.

Every task takes the transformers ``generate`` options of :data:`GENERATE` and the ``prompt``
option (its own prompt text instead of the canonical one); a task adds its own in
``Task.options`` (``threshold`` for detect, ``guidance`` for generate_image, ...), which win
over a generate option of the same name (detect's ``top_p`` drives its own sampler).

The command line writes options as ``--option [TASK.]KEY=VALUE`` (:func:`parse_options`);
values are read as YAML scalars are (``3`` int, ``0.9`` float, ``true``, ``none``) and then
checked by the option itself, so ``threshold=abc`` is an error naming the option, its type and
the task, before any model is loaded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..data.specs import parse_value
from ..errors import InputError, TaskError
from .registry import task_names

__all__ = ["Option", "GENERATE", "PROMPT", "parse_options"]


@dataclass(frozen=True)
class Option:
    """One decoding option: its type (``int``, ``float``, ``bool``, ``str``, ``"labels"`` for a
    list of strings or a comma-separated string, ``"size"`` for a (width, height) pair), the value
    used when it is left out (None: the task decides, e.g. from the model), bounds or choices, and
    a line of documentation."""

    type: Any
    default: Any = None
    doc: str = ""
    min: float | None = None
    max: float | None = None
    above: float | None = None          # strict lower bound (temperature > 0)
    choices: tuple | None = None

    def check(self, name: str, value, where: str) -> Any:
        """``value`` as this option's type; InputError naming the option, what it takes and ``where``."""
        if value is None:
            return None
        bad = lambda what: InputError(f"option {name}={value!r} of {where}: {what}")  # noqa: E731
        kind = self.type
        if kind is bool:
            if not isinstance(value, bool):
                raise bad("must be true or false")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad("must be a whole number")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad("must be a number")
            value = float(value)
        elif kind is str:
            if not isinstance(value, str) or not value.strip():
                raise bad("must be a non-empty string")
        elif kind == "labels":
            labels = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
            if not isinstance(labels, (list, tuple)) or not labels or \
                    not all(isinstance(s, str) and s.strip() for s in labels):
                raise bad("must be a non-empty list of labels (or 'a,b,c')")
            value = [s.strip() for s in labels]
        elif kind == "size":
            if not isinstance(value, (list, tuple)) or len(value) != 2 or \
                    not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise bad("must be (width, height) in pixels")
            value = (int(value[0]), int(value[1]))
        if self.choices is not None and value not in self.choices:
            raise bad(f"must be one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min:
            raise bad(f"must be >= {self.min:g}")
        if self.max is not None and value > self.max:
            raise bad(f"must be <= {self.max:g}")
        if self.above is not None and value <= self.above:
            raise bad(f"must be > {self.above:g}")
        return value


# transformers generate() options every task passes through (unless the task owns the name)
GENERATE: dict[str, Option] = {
    "max_new_tokens": Option(int, min=1, doc="longest answer in tokens (default: the task's)"),
    "min_new_tokens": Option(int, min=0, doc="shortest answer in tokens"),
    "num_beams": Option(int, 1, min=1, doc="beam search width (1: greedy)"),
    "do_sample": Option(bool, False, doc="sample instead of searching"),
    "temperature": Option(float, above=0, doc="sampling temperature"),
    "top_k": Option(int, min=1, doc="sample among the k most likely tokens"),
    "top_p": Option(float, above=0, max=1, doc="nucleus sampling mass"),
    "repetition_penalty": Option(float, above=0, doc="CTRL's repetition penalty"),
    "length_penalty": Option(float, doc="beam search length exponent"),
    "no_repeat_ngram_size": Option(int, min=0, doc="forbid repeating n-grams of this size"),
}
PROMPT = Option(str, doc="the prompt text to use instead of the task's canonical prompt")


def parse_options(items) -> dict:
    """The CLI's ``--option [TASK.]KEY=VALUE`` strings -> ``{TASK or None: {KEY: value}}``.

    ``None`` scopes an option to every task; a scope must name a registered task.
    """
    out: dict = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise InputError(f"--option {item!r} is not KEY=VALUE; write e.g. --option num_beams=3 or "
                             "--option generate_image.guidance=3")
        scope, _, name = key.rpartition(".")
        if scope and scope not in task_names():
            raise TaskError(f"--option {item!r} names unknown task {scope!r}; choose one of: "
                            f"{', '.join(task_names())}")
        text = text.strip()
        out.setdefault(scope or None, {})[name] = None if text.lower() in ("none", "null") else parse_value(text)
    return out

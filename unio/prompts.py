"""Task prompt templates, loaded from prompts/*.yaml (templates are data, not code).

Each top-level key of a YAML file is a task name::

    ground:
      canonical: "Where is {expression}?"       # used at inference
      paraphrases: ["Find {expression}.", ...]  # sampled in training, with the canonical one
      unconditional: "..."                      # optional: a prompt without placeholders

Placeholders are ``{question}``, ``{expression}``, ``{region}``, ``{text}`` and ``{labels}``.
Every template of a task must use exactly the placeholders of its canonical prompt; an unknown
placeholder, a missing one, or a malformed brace is a :class:`~unio.errors.PromptError` when the
file is loaded, not when a prompt is first rendered mid-training. ``{region}`` is a box: it is
rendered as its four location tokens (see :meth:`Prompts.render`).
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import PromptError
from .resources import data_path

__all__ = ["Prompts", "PLACEHOLDERS", "PromptPart"]

PLACEHOLDERS = ("question", "expression", "region", "text", "labels")
MIN_PARAPHRASES = 5
_KEYS = {"canonical", "paraphrases", "unconditional"}

# A rendered prompt is a list of parts: ("text", str) or ("region", box).
PromptPart = tuple


def _fields(template: str, where: str) -> set[str]:
    """Placeholder names in ``template``; PromptError on malformed braces or unknown names."""
    if not isinstance(template, str) or not template.strip():
        raise PromptError(f"{where}: a prompt must be a non-empty string, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PromptError(f"{where}: malformed braces in {template!r} ({exc}); write literal braces as "
                          "{{ and }}") from None
    names = set()
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conv:
            raise PromptError(f"{where}: unknown placeholder {{{name}}} in {template!r}; use only "
                              + ", ".join("{" + p + "}" for p in PLACEHOLDERS))
        names.add(name)
    return names


class Prompts:
    """The prompt templates of every task, validated on construction."""

    def __init__(self, entries: Mapping[str, Mapping[str, Any]], source: str = "<dict>"):
        self.source = source
        self._entries: dict[str, dict[str, Any]] = {}
        if not isinstance(entries, Mapping) or not entries:
            raise PromptError(f"{source}: expected a mapping of task name -> prompts, got {type(entries).__name__}")
        for task, entry in entries.items():
            self._entries[str(task)] = self._validate(str(task), entry, source)

    @staticmethod
    def _validate(task: str, entry, source: str) -> dict[str, Any]:
        where = f"{source}: task {task!r}"
        if not isinstance(entry, Mapping):
            raise PromptError(f"{where}: expected a mapping with 'canonical' and 'paraphrases', got {entry!r}")
        unknown = set(entry) - _KEYS
        if unknown:
            raise PromptError(f"{where}: unknown keys {sorted(unknown)}; allowed are {sorted(_KEYS)}")
        if "canonical" not in entry:
            raise PromptError(f"{where}: has no 'canonical' prompt; add one (it is used at inference)")
        canonical = entry["canonical"]
        fields = _fields(canonical, where)
        paraphrases = entry.get("paraphrases") or []
        if isinstance(paraphrases, str) or not isinstance(paraphrases, (list, tuple)):
            raise PromptError(f"{where}: 'paraphrases' must be a list of strings")
        for p in paraphrases:
            got = _fields(p, where)
            if got != fields:
                missing, extra = sorted(fields - got), sorted(got - fields)
                raise PromptError(
                    f"{where}: paraphrase {p!r} has placeholders {sorted(got)} but the canonical prompt "
                    f"{canonical!r} has {sorted(fields)}" + (f" (missing {missing})" if missing else "")
                    + (f" (extra {extra})" if extra else "") + "; every template must use the same ones")
        out = {"canonical": canonical, "paraphrases": list(paraphrases), "placeholders": fields}
        if "unconditional" in entry:
            if _fields(entry["unconditional"], where + " (unconditional)"):
                raise PromptError(f"{where}: the 'unconditional' prompt must have no placeholders")
            out["unconditional"] = entry["unconditional"]
        return out

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Prompts":
        """Load a YAML file or every ``*.yaml`` of a folder (default: the shipped prompts/)."""
        if path is None:
            path = data_path("prompts")
        path = Path(path)
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise PromptError(f"no prompt templates at {path}; pass a prompts/*.yaml file or a folder of them")
        entries: dict[str, Any] = {}
        origin: dict[str, Path] = {}
        for f in files:
            try:
                data = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise PromptError(f"{f} is not valid YAML: {exc}") from None
            if data is None:
                continue
            if not isinstance(data, Mapping):
                raise PromptError(f"{f}: expected a mapping of task name -> prompts at the top level")
            for task, entry in data.items():
                if task in entries:
                    raise PromptError(f"task {task!r} has prompts in both {origin[task]} and {f}; keep one")
                entries[task], origin[task] = entry, f
        return cls(entries, source=str(path))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for task, e in self._entries.items():
            d = {"canonical": e["canonical"], "paraphrases": list(e["paraphrases"])}
            if "unconditional" in e:
                d["unconditional"] = e["unconditional"]
            out[task] = d
        return out

    def save(self, folder: str | Path) -> Path:
        """Write every template to ``folder/prompts.yaml`` (an export directory's copy)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "prompts.yaml"
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=True, allow_unicode=True, width=120),
                        encoding="utf-8")
        return path

    def with_entries(self, entries: Mapping[str, Mapping[str, Any]], source: str = "<task>") -> "Prompts":
        """These prompts plus ``entries`` for tasks they do not have (a task's own templates)."""
        new = {k: v for k, v in entries.items() if k not in self._entries}
        if not new:
            return self
        out = Prompts(new, source)
        out._entries = {**self._entries, **out._entries}
        out.source = self.source
        return out

    # ------------------------------------------------------------------ queries
    @property
    def tasks(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, task: str) -> bool:
        return task in self._entries

    def _entry(self, task: str) -> dict[str, Any]:
        try:
            return self._entries[task]
        except KeyError:
            raise PromptError(f"no prompt templates for task {task!r} in {self.source}; known: "
                              f"{sorted(self._entries)}. Add an entry to prompts/*.yaml") from None

    def canonical(self, task: str) -> str:
        return self._entry(task)["canonical"]

    def paraphrases(self, task: str) -> list[str]:
        return list(self._entry(task)["paraphrases"])

    def templates(self, task: str) -> list[str]:
        return [self.canonical(task)] + self.paraphrases(task)

    def placeholders(self, task: str) -> set[str]:
        return set(self._entry(task)["placeholders"])

    def unconditional(self, task: str) -> str | None:
        return self._entry(task).get("unconditional")

    def texts(self) -> list[str]:
        """Every template with its placeholders removed (text for a tokenizer's training corpus)."""
        out = []
        for task in self._entries:
            extra = [self.unconditional(task)] if self.unconditional(task) else []
            for template in self.templates(task) + extra:
                out.append(" ".join("".join(lit for lit, _, _, _ in string.Formatter().parse(template)).split()))
        return out

    def choose(self, task: str, rng=None) -> str:
        """The canonical template without ``rng``; a uniformly drawn template with it."""
        if rng is None:
            return self.canonical(task)
        options = self.templates(task)
        return options[int(rng.integers(len(options)))]

    def check(self, expected: Mapping[str, Iterable[str]]) -> None:
        """Each task in ``expected`` has templates using exactly the given placeholders."""
        for task, names in expected.items():
            want = set(names)
            if task not in self._entries:
                raise PromptError(f"{self.source} has no prompts for task {task!r}; add an entry with a "
                                  f"canonical prompt using {sorted('{' + n + '}' for n in want) or 'no placeholders'}")
            got = self.placeholders(task)
            if got != want:
                raise PromptError(
                    f"{self.source}: the prompts of task {task!r} use placeholders {sorted(got)} but the task "
                    f"fills {sorted(want)}; fix the templates (missing {sorted(want - got)}, unknown "
                    f"{sorted(got - want)})")

    # ------------------------------------------------------------------ rendering
    def render(self, task: str, rng=None, template: str | None = None, **values) -> list[PromptPart]:
        """Fill a template: a list of ``("text", str)`` and ``("region", box)`` parts.

        ``template`` overrides the choice (a caller's own prompt); it is validated the same way.
        Values for every placeholder of the template must be given; text values are inserted
        verbatim (braces inside them are not re-read).
        """
        if template is None:
            template = self.choose(task, rng)
        names = _fields(template, f"prompt for {task!r}")
        missing = sorted(n for n in names if values.get(n) is None)
        if missing:
            raise PromptError(f"the prompt {template!r} of task {task!r} needs a value for "
                              + ", ".join("{" + n + "}" for n in missing))
        parts: list[PromptPart] = []
        for literal, name, _, _ in string.Formatter().parse(template):
            if literal:
                _append_text(parts, literal)
            if name is None:
                continue
            if name == "region":
                parts.append(("region", values[name]))
            elif name == "labels":
                labels = values[name]
                _append_text(parts, labels if isinstance(labels, str) else ", ".join(map(str, labels)))
            else:
                _append_text(parts, str(values[name]))
        return parts

    def render_text(self, task: str, rng=None, template: str | None = None, **values) -> str:
        """The same prompt as readable text, a region shown as ``<box x1,y1,x2,y2>``."""
        return parts_to_text(self.render(task, rng=rng, template=template, **values))

    def __repr__(self) -> str:
        return f"Prompts({len(self._entries)} tasks from {self.source})"


def _append_text(parts: list, text: str) -> None:
    if parts and parts[-1][0] == "text":
        parts[-1] = ("text", parts[-1][1] + text)
    else:
        parts.append(("text", text))


def parts_to_text(parts: list[PromptPart]) -> str:
    out = []
    for kind, value in parts:
        if kind == "region":
            out.append("<box " + ",".join(f"{float(v):g}" for v in value) + ">")
        else:
            out.append(value)
    return "".join(out)

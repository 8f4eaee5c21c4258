"""Requests of several tasks in one model call (:meth:`unio.pipeline.Pipeline.run_many`; the
server's batches).

A request decoded greedily through the lean loop (no beams, sampling, candidates or guidance)
can share a batch with any other such request: its rows keep their own task's logits processors
and their own ``max_new_tokens`` (:class:`~unio.tasks.constraints.RowSegments`), the encoder runs
once for all of them, and a row leaves the network's batch when it has written its end token
(:func:`unio.model.decoding.decode`), so five-token answers do not wait on seventy-token picture
codes. Each answer is the one a batch of its own task would give.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InputError, UnioError
from .tasks import get_task
from .tasks.constraints import RowSegments

__all__ = ["run_many", "shares_decoding", "lean", "LEAN_OPTIONS"]

LEAN_OPTIONS = frozenset({"max_new_tokens", "do_sample", "num_beams"})  # what greedy_decode runs; else generate()



def lean(pipe, kw: dict) -> bool:
    """Whether generate options ``kw`` go through the lean greedy loop (else transformers' generate)."""
    return (pipe.lean and set(kw) <= LEAN_OPTIONS and not kw.get("do_sample") and kw.get("num_beams", 1) == 1
            and "max_new_tokens" in kw)


@dataclass(eq=False)  # hashed by identity
class _Plan:
    name: str
    task: Any
    examples: list
    own: dict
    gen: dict
    options: dict
    batch: bool
    shared: bool      # greedy through the lean loop: its rows can share a batch with other tasks' rows
    limit: int        # max_new_tokens


def run_many(pipe, requests: Sequence[dict], *, batch_size=None) -> list:
    """See :meth:`unio.pipeline.Pipeline.run_many`."""
    if isinstance(requests, dict) or not all(isinstance(r, dict) and r.get("task") for r in requests):
        raise InputError('run_many takes a list of requests, each a dict with a "task" (and "image", inputs, '
                         'options as pipe.run takes them)')
    plans = []
    for r in requests:
        r = dict(r)
        name = r.pop("task")
        _, examples, own, gen, batch = pipe._prepare(name, r.pop("image", None), r)
        plans.append(_plan(pipe, name, examples, own, gen, batch))
    shared = [p for p in plans if p.shared]
    rows = [(p, ex) for p in shared for ex in p.examples]
    bs = int(batch_size or pipe.batch_size)
    outs: dict[int, list] = {id(p): [] for p in shared}
    for i in range(0, len(rows), bs):
        chunk = rows[i:i + bs]
        segments, limits, at = [], [], 0
        for p in dict.fromkeys(p for p, _ in chunk):  # each plan's rows in this chunk, in order
            exs = [ex for q, ex in chunk if q is p]
            procs = p.task.logits_processors(pipe.ctx, exs[0], batch=exs, **p.options)
            segments.append((at, at + len(exs), procs, p.limit))
            limits += [p.limit] * len(exs)
            at += len(exs)
        generated = pipe._generate([ex for _, ex in chunk], [RowSegments(segments, pipe.ctx.vocab.eos_id)],
                                   {"max_new_tokens": max(limits)}, any(p.task.needs_scores for p, _ in chunk),
                                   limits=limits)
        for (p, _), out in zip(chunk, generated):
            outs[id(p)].append(out if p.task.needs_scores else (out[0], None, None))
    alone: dict = {}  # the other requests: one predict_examples call per task and options (a seed: its own)
    for p in plans:
        if not p.shared:
            key = (p.name, repr(sorted(p.own.items())), repr(sorted(p.gen.items())),
                   id(p) if p.options.get("seed") is not None else None)
            alone.setdefault(key, []).append(p)
    for group in alone.values():
        out = pipe.predict_examples(group[0].name, [ex for p in group for ex in p.examples], batch_size=batch_size,
                                    gen=group[0].gen, **group[0].own)
        for p in group:
            outs[id(p)], out = out[:len(p.examples)], out[len(p.examples):]
    results = []
    for p in plans:
        if not p.shared:
            out = outs[id(p)]
        else:
            parsed = [p.task.parse(ids, pipe.ctx, ex.info, logprobs=lp, raw_logprobs=raw, meta=ex.meta,
                                   image=ex.image, refine=p.options.get("refine", True))
                      for ex, (ids, lp, raw) in zip(p.examples, outs[id(p)])]
            out = p.task.finish(parsed, p.options)
        results.append(out if p.batch else out[0])
    return results


def _plan(pipe, name: str, examples, own: dict, gen: dict, batch: bool) -> _Plan:
    """What ``predict_examples`` would do with a request, and whether its decoding can be shared."""
    task, options, gen = pipe.resolve_options(name, own, gen)
    kw = {**task.generation_kwargs(pipe.ctx, **options), **gen}
    return _Plan(name, task, list(examples), own, gen, options, batch, _shareable(pipe, task, options, kw),
                 int(kw.get("max_new_tokens") or 0))


def shares_decoding(pipe, name: str, options: dict) -> bool:
    """Whether a request of task ``name`` with checked ``options`` (its own and generate's) can share
    a batch with other tasks' requests; False too when the options do not hold for this model (the
    request then fails on its own)."""
    try:
        own, gen = get_task(name).split_options(options)
        task, options, gen = pipe.resolve_options(name, own, gen)
        return _shareable(pipe, task, options, {**task.generation_kwargs(pipe.ctx, **options), **gen})
    except UnioError:
        return False


def _shareable(pipe, task, options: dict, kw: dict) -> bool:
    """Greedy through the lean loop, one candidate per example, no guidance rows."""
    return lean(pipe, kw) and task.candidates(options) == 1 and not task.extra_rows(pipe.ctx, [None], options)


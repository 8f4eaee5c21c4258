"""Requests of several tasks in one model call (:meth:`unio.pipeline.Pipeline.run_many`; the
server's batches).

A request decoded greedily through the lean loop (no beams, sampling, candidates or guidance)
can share a batch with any other such request: its rows keep their own task's logits processors
and their own ``max_new_tokens`` (:class:`~unio.tasks.constraints.RowSegments`), the encoder runs
once for all of them, and a row leaves the network's batch when it has written its end token
(:func:`unio.model.decoding.decode`), so five-token answers do not wait on seventy-token picture
codes. Each answer is the one a batch of its own task would give.

:class:`Stream` goes one step further for a server (iteration-level batching, Orca: Yu et al.,
OSDI 2022): requests join the decoding batch between any two steps, their encoder run once on
joining, and each leaves with its answer as soon as its own rows end, so a request that arrives
while others decode starts at the next step instead of waiting for the batch to drain.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .errors import InputError, UnioError
from .model.decoding import LiveBatch, next_tokens, spread, until_end
from .tasks import get_task
from .tasks.constraints import RowSegments

__all__ = ["run_many", "shares_decoding", "lean", "LEAN_OPTIONS", "Stream", "Parse"]

IDLE_STEPS = 4  # a Stream's free slots stay this many steps for a newcomer before the batch is compacted
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

    def answer(self, pipe, outs):
        """The request's result from each example's (ids, log-probs, raw log-probs)."""
        parsed = [self.task.parse(ids, pipe.ctx, ex.info, logprobs=lp, raw_logprobs=raw, meta=ex.meta,
                                  image=ex.image, refine=self.options.get("refine", True))
                  for ex, (ids, lp, raw) in zip(self.examples, outs)]
        out = self.task.finish(parsed, self.options)
        return out if self.batch else out[0]


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
    return [p.answer(pipe, outs[id(p)]) if p.shared else (outs[id(p)] if p.batch else outs[id(p)][0])
            for p in plans]


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



class Parse:
    """A request's answer still to be read from its tokens (``Stream(parse_later=True)``): call it,
    in any thread, for the result or the exception its reading raised."""

    def __init__(self, fn, live):
        self.fn, self.live = fn, live

    def __call__(self):
        with torch.inference_mode():
            return self.fn(self.live)


@dataclass(eq=False)
class _Live:
    """A request in a :class:`Stream`: its plan, its processors and its rows' decoding so far."""

    plan: _Plan
    handle: Any
    processors: list = field(default_factory=list)
    sequences: torch.Tensor | None = None    # (b, 1 + steps), starting with the decoder start id
    unfinished: torch.Tensor | None = None   # (b,) 1 while a row has not written its end token
    going: torch.Tensor | None = None        # its rows still decoding
    slots: torch.Tensor | None = None        # each row's slot in the network's batch
    lps: list = field(default_factory=list)
    raws: list = field(default_factory=list)


class Stream:
    """Iteration-level batching over one pipeline (see the module's doc): :meth:`add` a request (a
    dict as :meth:`run_many` takes; it must :meth:`~unio.pipeline.Pipeline.shares_decoding`),
    then call :meth:`step` while :attr:`busy`: each call lets waiting requests join (up to
    ``max_rows`` rows in the batch; one encoder call for all that join), decodes one token for
    every row, and returns ``(handle, result)`` for each request that ended (its result, or the
    exception its answer raised; with ``parse_later``, a :class:`Parse` to call for it, so that a
    server reads answers, e.g. decodes a depth map's codes, beside the next steps). Each answer is
    the one ``pipe.run`` gives the request alone (the processors of a request see its own rows only,
    at its own step). Torch models only."""

    def __init__(self, pipe, max_rows: int = 16, parse_later: bool = False):
        if not self.runs_on(pipe):
            raise UnioError("a Stream decodes with the torch model; this pipeline runs another backend")
        self.pipe, self.max_rows, self.parse_later = pipe, max(1, int(max_rows)), parse_later
        self.waiting: deque[_Live] = deque()
        self.live: list[_Live] = []
        self.batch: LiveBatch | None = None
        self.decoded, self.decoded_tasks = 0, []  # rows the last step decoded, and their tasks
        self._idle = 0

    @staticmethod
    def runs_on(pipe) -> bool:
        """Whether ``pipe``'s network can decode in a Stream (the torch model; not another backend's steps)."""
        return getattr(pipe.model, "decode_steps", None) is None

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.live)

    @property
    def rows(self) -> int:
        """Rows now decoding."""
        return self.batch.rows if self.batch is not None else 0

    def add(self, request: dict, handle=None):
        """Queue ``request``; returns ``handle`` (default: the request itself). Bad input raises here."""
        r = dict(request)
        name = r.pop("task")
        _, examples, own, gen, batch = self.pipe._prepare(name, r.pop("image", None), r)
        plan = _plan(self.pipe, name, examples, own, gen, batch)
        if not plan.shared:
            raise InputError(f"this {name} request does not decode greedily one row per example (beams, sampling, "
                             "candidates or guidance); run it with pipe.run")
        handle = request if handle is None else handle
        self.waiting.append(_Live(plan, handle))
        return handle

    def drop(self, handle) -> None:
        """Forget ``handle``'s request (its caller has gone): out of the queue or the batch."""
        self.waiting = deque(r for r in self.waiting if r.handle is not handle)
        for r in [r for r in self.live if r.handle is handle]:
            self.batch.release(r.slots[r.going])
            self.live.remove(r)
        self._tidy()

    @torch.inference_mode()
    def step(self) -> list:
        """Join what fits, decode one token of every row, return the ``(handle, result)`` that ended."""
        pipe, vocab = self.pipe, self.pipe.ctx.vocab
        done, self.decoded = [], 0
        self._join(done)
        if not self.live:
            return done
        batch = self.batch
        self.decoded, self.decoded_tasks = batch.rows, list(dict.fromkeys(r.plan.name for r in self.live))
        last = torch.full((batch.slots, 1), vocab.pad_id, dtype=torch.long, device=pipe.device)
        for r in self.live:
            last[r.slots[r.going]] = r.sequences[r.going, -1:]
        logits = batch.step(last)
        stay = []
        for r in self.live:
            part = logits[r.slots[r.going]]
            # ended rows get zeros, as decode() gives them to the processors
            full = spread(part, r.going, len(r.sequences)) if len(r.going) < len(r.sequences) else part
            _, ids, lp, raw, r.unfinished = next_tokens(
                r.sequences, full, r.processors, r.unfinished, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id,
                want_scores=r.plan.task.needs_scores)
            if r.plan.task.needs_scores:
                r.lps.append(lp)
                r.raws.append(raw)
            r.sequences = torch.cat([r.sequences, ids[:, None]], dim=-1)
            if not bool(r.unfinished.any()) or r.sequences.shape[1] > r.plan.limit:
                batch.release(r.slots[r.going])
                done.append((r.handle, Parse(self._answer, r) if self.parse_later else self._answer(r)))
                continue
            still = r.unfinished[r.going].bool()
            if not bool(still.all()):
                batch.release(r.slots[r.going[~still]])
                r.going = r.going[still]
            stay.append(r)
        self.live = stay
        self._tidy()
        return done

    # -- internals
    def _join(self, done: list) -> None:
        room = self.max_rows - self.rows
        joining = []
        while self.waiting and (len(self.waiting[0].plan.examples) <= room or not (self.live or joining)):
            r = self.waiting.popleft()
            room -= len(r.plan.examples)
            joining.append(r)
        if not joining:
            return
        pipe, ctx = self.pipe, self.pipe.ctx
        ok = []
        for r in joining:  # a request whose processors cannot be built fails alone
            try:
                exs = r.plan.examples
                r.processors = list(r.plan.task.logits_processors(ctx, exs[0], batch=exs, **r.plan.options))
                ok.append(r)
            except Exception as exc:
                done.append((r.handle, exc))
        if not ok:
            return
        enc = pipe.model.get_encoder()(**pipe._collate([ex for r in ok for ex in r.plan.examples]))
        if self.batch is None:
            self.batch = LiveBatch(pipe.model)
        slots, at = self.batch.join(enc.last_hidden_state, enc.attention_mask), 0
        for r in ok:
            b = len(r.plan.examples)
            r.slots, at = slots[at:at + b], at + b
            r.sequences = torch.full((b, 1), ctx.vocab.bos_id, dtype=torch.long, device=pipe.device)
            r.unfinished = torch.ones(b, dtype=torch.long, device=pipe.device)
            r.going = torch.arange(b, device=pipe.device)
        self.live += ok
        self._idle = 0

    def _tidy(self) -> None:
        """Drop free slots when they are many, or have stayed free a few steps with no one to take them."""
        if not self.live:
            self.batch, self._idle = None, 0  # an idle stream holds no cache
            return
        free = self.batch.slots - self.batch.rows
        self._idle = self._idle + 1 if free and not self.waiting else 0
        if free and (2 * free >= self.batch.slots or self._idle >= IDLE_STEPS):
            where = self.batch.compact()
            for r in self.live:
                r.slots = where[r.slots]
            self._idle = 0

    def _answer(self, r: _Live):
        """(result or exception) of a request whose rows have all ended."""
        try:
            lp = torch.stack(r.lps, 1) if r.lps else None
            raw = torch.stack(r.raws, 1) if r.raws else None
            return r.plan.answer(self.pipe, until_end(r.sequences[:, 1:], lp, raw, self.pipe.ctx.vocab.eos_id))
        except Exception as exc:
            return exc

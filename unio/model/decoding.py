"""Greedy decoding without transformers' generate loop: the same network calls, fewer around them.

transformers' ``generate`` is general (any model, beam search, streamers, stopping criteria,
cache classes chosen at run time) and pays for it on every step; its ``DynamicCache`` also grows
each layer's keys and values by concatenation, a copy of the whole history per token. For the
path unio takes most (one sequence per row, ``do_sample=False``, logits processors that choose or
constrain the next id, e.g. :class:`~unio.tasks.constraints.GuidedSampler` for image codes)
:func:`greedy_decode` runs the encoder once, then the decoder one token at a time into a
:class:`StaticCache` allocated once for ``max_new_tokens``, applies the processors and takes the
argmax, exactly as ``generate``'s greedy loop does: same modules, same order, same dtype, so the
output ids are the same (tests/test_decoding.py compares them, with and without processors,
guidance and scores). Rows that have written their end token leave the network's batch (their
cache rows are dropped), so a short answer stops costing anything while a long one in the same
batch goes on: a batch mixing 5-token answers with 70-token picture codes runs its late steps on
the long rows alone. Beam search and transformers' own sampling stay with ``generate``.
The loop itself, :func:`decode`, runs over any object that gives next-token logits step by step
(:class:`TorchSteps` for the network; the onnxruntime backend, :mod:`unio.backends.ort`, brings
its own graphs' steps, greedy or sampled, through the same loop and processors).

:class:`LiveBatch` is the network's side of iteration-level batching (Orca, Yu et al., OSDI 2022):
rows join (their encoder states' cross-attention keys and values computed once) and leave
between any two steps, each at its own position, so a server answers a short request while a
long one decodes and starts a new one without waiting for the batch to drain.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["StaticCache", "TorchSteps", "LiveBatch", "greedy_decode", "decode", "Decoded", "next_tokens",
           "spread", "until_end"]


class _Self:
    """Self-attention keys and values of every decoder layer in buffers sized for the whole output."""

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, dtype, device):
        self.keys = torch.empty(layers, batch, heads, length, head_dim, dtype=dtype, device=device)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    def update(self, k, v, layer: int):
        """Write this step's keys / values of ``layer`` and return its whole history (views, no copy)."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        if layer == self.keys.shape[0] - 1:
            self.length = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def keep(self, rows: torch.Tensor) -> None:
        self.keys, self.values = self.keys[:, rows], self.values[:, rows]


@dataclass
class _Cross:
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


class _CrossAll:
    def __init__(self, layers: int):
        self.layers = [_Cross() for _ in range(layers)]

    def update(self, k, v, layer: int):
        self.layers[layer].keys, self.layers[layer].values = k, v
        return k, v

    def keep(self, rows: torch.Tensor) -> None:
        for c in self.layers:
            if c.keys is not None:
                c.keys, c.values = c.keys[rows], c.values[rows]


class StaticCache:
    """What the decoder layers read of transformers' ``EncoderDecoderCache`` (``self_attention_cache``,
    ``cross_attention_cache``, ``is_updated``, ``get_seq_length``), with the self-attention history
    in preallocated buffers: a step writes one position instead of copying the history."""

    def __init__(self, config, batch: int, length: int, dtype, device):
        self.self_attention_cache = _Self(config.decoder_layers, batch, config.num_heads, length, config.head_dim,
                                          dtype, device)
        self.cross_attention_cache = _CrossAll(config.decoder_layers)  # computed once, at the first step
        self.is_updated: dict[int, bool] = {}

    def get_seq_length(self) -> int:
        return self.self_attention_cache.length

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` (indices into the current batch) go on."""
        self.self_attention_cache.keep(rows)
        self.cross_attention_cache.keep(rows)


@dataclass
class Decoded:
    """``sequences`` (B, 1 + steps) starting with the decoder start id, finished rows padded; with
    scores, each written id's log-probability (B, steps) under the processed scores and under the
    raw logits (as ``compute_transition_scores(..., normalize_logits=True)`` gives them; 0 after a
    row's end), and with ``keep_scores`` per step the processed scores and the raw logits
    themselves (float32, (B, V)), as ``generate``'s ``scores`` and ``logits``."""

    sequences: torch.Tensor
    scores: tuple | None = None
    logits: tuple | None = None
    logprobs: torch.Tensor | None = None
    raw_logprobs: torch.Tensor | None = None


class TorchSteps:
    """The network's own decoding steps: its encoder once, then its decoder one token at a time into a
    :class:`StaticCache` allocated for ``max_new_tokens``; each call returns the next-token logits."""

    def __init__(self, model, max_new_tokens: int, pixel_values=None, input_ids=None, attention_mask=None,
                 patch_mask=None, has_image=None):
        config = model.config
        enc = model.get_encoder()(pixel_values, input_ids, attention_mask, patch_mask, has_image)
        self.model, self.states, self.enc_mask = model, enc.last_hidden_state, enc.attention_mask
        self.batch, self.device = self.states.shape[0], self.states.device
        self.cache = StaticCache(config, self.batch, max_new_tokens, self.states.dtype, self.device)
        self.weight = model.shared.weight
        self.bias = _output_bias(config, self.weight)

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` (indices into the current batch) go on: later calls take and give those rows."""
        self.states = self.states[rows]
        self.enc_mask = self.enc_mask[rows] if self.enc_mask is not None else None
        self.cache.keep(rows)

    def __call__(self, last_ids: torch.Tensor) -> torch.Tensor:
        """(b, 1) ids of the last step of the rows still going -> (b, V) float32 logits of the next one."""
        h, _ = self.model.decoder(last_ids, self.states, self.enc_mask, None, self.cache, False)
        return F.linear(h[:, -1], self.weight, self.bias).to(torch.float32)  # a copy, as generate takes it


@torch.inference_mode()
def greedy_decode(model, *, max_new_tokens: int, logits_processor=(), eos_token_id: int, pad_token_id: int,
                  decoder_start_token_id: int, want_scores: bool = False, keep_scores: bool = False,
                  pixel_values=None, input_ids=None,
                  attention_mask=None, patch_mask=None, has_image=None) -> Decoded:
    """Greedy decoding of ``model`` (a :class:`~unio.model.UnioForConditionalGeneration`) for at most
    ``max_new_tokens``, stopping when every row has written ``eos_token_id``.

    A stand-in for the network that runs it elsewhere (``unio.backends.ort.OnnxModel``) brings its
    own steps through a ``decode_steps(max_new_tokens, **inputs)`` method; the loop is the same."""
    inputs = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                  patch_mask=patch_mask, has_image=has_image)
    own = getattr(model, "decode_steps", None)
    steps = own(max_new_tokens, **inputs) if own is not None else TorchSteps(model, max_new_tokens, **inputs)
    return decode(steps, max_new_tokens=max_new_tokens, logits_processor=logits_processor,
                  eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                  decoder_start_token_id=decoder_start_token_id, want_scores=want_scores, keep_scores=keep_scores)


@torch.inference_mode()
def decode(steps, *, max_new_tokens: int, logits_processor=(), eos_token_id: int, pad_token_id: int,
           decoder_start_token_id: int, want_scores: bool = False, keep_scores: bool = False,
           do_sample: bool = False, generator: torch.Generator | None = None) -> Decoded:
    """The decoding loop over ``steps`` (``steps.batch`` rows on ``steps.device``; ``steps(last_ids)``
    -> (B, V) float32 logits): the processors, then the argmax, or with ``do_sample`` a draw from
    the softmax of the processed scores (as ``generate``'s sampling does); finished rows get
    ``pad_token_id``. With steps that can drop rows (a ``keep(rows)`` method), finished rows leave
    the network's batch; the processors still see every row (a finished row's logits are zeros),
    so per-row processors keep their rows."""
    B, device = steps.batch, steps.device
    sequences = torch.full((B, 1), decoder_start_token_id, dtype=torch.long, device=device)
    unfinished = torch.ones(B, dtype=torch.long, device=device)
    scores, raw, lps, raw_lps = [], [], [], []
    compact = hasattr(steps, "keep")
    going = torch.arange(B, device=device)  # the rows in the network's batch, in order
    for _ in range(max_new_tokens):
        logits = spread(steps(sequences[going, -1:]), going, B) if len(going) < B else steps(sequences[:, -1:])
        processed, next_ids, lp, raw_lp, unfinished = next_tokens(
            sequences, logits, logits_processor, unfinished, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            want_scores=want_scores, do_sample=do_sample, generator=generator)
        if want_scores and keep_scores:
            scores.append(processed)
            raw.append(logits)
        if want_scores:
            lps.append(lp)
            raw_lps.append(raw_lp)
        sequences = torch.cat([sequences, next_ids[:, None]], dim=-1)
        if unfinished.max() == 0:
            break
        if compact:
            still = unfinished[going].bool()
            if not bool(still.all()):
                steps.keep(still.nonzero()[:, 0])
                going = going[still]
    keep = want_scores and keep_scores
    return Decoded(sequences, tuple(scores) if keep else None, tuple(raw) if keep else None,
                   torch.stack(lps, 1) if want_scores else None, torch.stack(raw_lps, 1) if want_scores else None)


def spread(part: torch.Tensor, going: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, V) logits: ``part``'s at ``going``, zeros for the rows that have ended."""
    full = part.new_zeros(rows, part.shape[-1])
    full[going] = part
    return full


def next_tokens(sequences, logits, processors, unfinished, *, eos_token_id: int, pad_token_id: int,
                want_scores: bool = False, do_sample: bool = False, generator=None):
    """One step's choice for rows ``sequences`` (B, t) given their next-token ``logits`` (B, V):
    the processors, then the argmax (or, with ``do_sample``, a draw from the softmax), ended rows
    writing ``pad_token_id``. -> (processed scores, written ids (B,), with ``want_scores`` the
    written ids' log-probabilities under the processed scores and under the logits (0 for ended
    rows; else None, None), the rows still unfinished after this step)."""
    processed = logits
    for processor in processors:
        processed = processor(sequences, processed)
    if do_sample:
        ids = torch.multinomial(torch.softmax(processed, dim=-1), 1, generator=generator)[:, 0]
    else:
        ids = processed.argmax(-1)
    lp = raw = None
    if want_scores:  # for the rows still going only
        rows = unfinished.nonzero()[:, 0]
        lp, raw = _chosen_logprob(processed, ids, rows), _chosen_logprob(logits, ids, rows)
    ids = ids * unfinished + pad_token_id * (1 - unfinished)
    return processed, ids, lp, raw, unfinished & (ids != eos_token_id).long()


def until_end(sequences: torch.Tensor, logprobs, raw_logprobs, eos_token_id: int, limits=None) -> list:
    """Per row of ``sequences`` (B, steps; the start id dropped): (its ids up to and with the end
    token, its log-probabilities, its raw log-probabilities) as lists (None where not given);
    ``limits``: each row's own token budget, applied first."""
    lp = logprobs.float().cpu().tolist() if torch.is_tensor(logprobs) else logprobs
    raw = raw_logprobs.float().cpu().tolist() if torch.is_tensor(raw_logprobs) else raw_logprobs
    out = []
    for r, row in enumerate(sequences.cpu().tolist()):
        if limits is not None:
            row = row[: limits[r]]
        n = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
        out.append((row[:n], lp[r][:n] if lp else None, raw[r][:n] if raw else None))
    return out


def _output_bias(config, weight: torch.Tensor):
    """-inf on the padding ids past ``used_vocab_size`` (never predicted, as forward does), else None."""
    if config.used_vocab_size >= config.vocab_size:
        return None
    bias = weight.new_zeros(config.vocab_size)
    bias[config.used_vocab_size:] = float("-inf")
    return bias


def _chosen_logprob(scores: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B,) log-softmax of ``scores`` at ``ids`` for ``rows``, 0 elsewhere."""
    out = scores.new_zeros(scores.shape[0])
    part = scores[rows]
    out[rows] = torch.log_softmax(part, -1).gather(1, ids[rows, None])[:, 0]  # as compute_transition_scores
    return out


class _RowSelf:
    """Self-attention history of rows at different positions: row r writes its next key / value
    at ``positions[r]`` and reads its first ``positions[r] + 1``."""

    def __init__(self, layers: int, heads: int, head_dim: int, dtype, device):
        self.keys = torch.zeros(layers, 0, heads, 16, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)
        self.end = 0      # keys read this step: max(positions) + 1

    def begin(self) -> None:
        self.end = int(self.positions.max()) + 1
        if self.end > self.keys.shape[3]:  # grow the buffers (doubling: a copy per doubling, not per step)
            width = max(self.end, 2 * self.keys.shape[3])
            self.keys, self.values = _pad(self.keys, width, 0.0, 3), _pad(self.values, width, 0.0, 3)

    def update(self, k, v, layer: int):
        rows = torch.arange(k.shape[0], device=k.device)
        self.keys[layer][rows, :, self.positions] = k[:, :, 0]
        self.values[layer][rows, :, self.positions] = v[:, :, 0]
        return self.keys[layer, :, :, :self.end], self.values[layer, :, :, :self.end]


class LiveBatch:
    """The decoder's state for rows that join and leave between steps (see the module's doc), in
    slots: ``join(states, mask)`` puts new rows (encoder states (b, N, C) and their (b, N) bool
    mask, or None) into free slots, or new ones, and returns their slot indices; ``release(slots)``
    frees slots (no copy: a free slot decodes a pad id until a new row takes it);
    ``compact()`` drops the free slots (a copy of the caches) and says where each slot went;
    ``step(last_ids)`` takes each slot's last id (S, 1) and returns (S, V) float32 next-token
    logits, each row's at its own position. A row's logits are those :class:`TorchSteps` gives it
    in a batch of its own, up to float rounding (its keys are read under a mask beside longer rows')."""

    def __init__(self, model):
        config = model.config
        p = model.shared.weight
        self.model, self.weight = model, p
        self.layers = [layer.cross_attn for layer in model.decoder.layers]
        self.self_attention_cache = _RowSelf(config.decoder_layers, config.num_heads, config.head_dim, p.dtype,
                                             p.device)
        self.cross_attention_cache = _CrossAll(config.decoder_layers)
        for c in self.cross_attention_cache.layers:
            c.keys = p.new_zeros(0, config.num_heads, 0, config.head_dim)
            c.values = p.new_zeros(0, config.num_heads, 0, config.head_dim)
        self.is_updated = {i: True for i in range(config.decoder_layers)}  # cross keys are computed at join
        self.enc_mask = torch.zeros(0, 0, dtype=torch.bool, device=p.device)
        self.active = torch.zeros(0, dtype=torch.bool, device=p.device)
        self.bias = _output_bias(config, p)

    @property
    def slots(self) -> int:
        return self.active.shape[0]

    @property
    def rows(self) -> int:
        """Slots holding a row."""
        return int(self.active.sum())

    @property
    def row_positions(self) -> torch.Tensor:
        return self.self_attention_cache.positions

    def self_mask(self):
        """(S, 1, 1, end) keys each slot may read; None when every slot is at the same position."""
        pos = self.self_attention_cache.positions
        if bool((pos == pos[0]).all()):
            return None
        keys = torch.arange(self.self_attention_cache.end, device=pos.device)
        return (keys[None, :] <= pos[:, None])[:, None, None, :]

    @torch.inference_mode()
    def join(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n = states.shape[:2]
        mask = torch.ones(b, n, dtype=torch.bool, device=states.device) if mask is None else mask.bool()
        free = (~self.active).nonzero()[:, 0][:b]
        grow = b - len(free)
        own, caches = self.self_attention_cache, self.cross_attention_cache.layers
        if grow:
            S = self.slots
            own.keys, own.values = _pad(own.keys, S + grow, 0.0), _pad(own.values, S + grow, 0.0)
            own.positions = _pad(own.positions, S + grow, 0, 0)
            self.active = _pad(self.active, S + grow, False, 0)
            self.enc_mask = _pad(self.enc_mask, S + grow, False, 0)
            for c in caches:
                c.keys, c.values = _pad(c.keys, S + grow, 0.0, 0), _pad(c.values, S + grow, 0.0, 0)
            free = torch.cat((free, torch.arange(S, S + grow, device=free.device)))
        width = self.enc_mask.shape[1]
        if n > width:  # a longer prompt than any so far: every slot's encoder keys get room
            self.enc_mask = _pad(self.enc_mask, n, False)
            for c in caches:
                c.keys, c.values = _pad(c.keys, n, 0.0, 2), _pad(c.values, n, 0.0, 2)
            width = n
        self.enc_mask[free] = _pad(mask, width, False)
        for attn, c in zip(self.layers, caches):
            k, v = attn.encoder_kv(states)
            c.keys[free, :, :n], c.values[free, :, :n] = k, v
        own.positions[free] = 0
        self.active[free] = True
        return free

    @torch.inference_mode()
    def release(self, slots: torch.Tensor) -> None:
        self.active[slots] = False
        self.self_attention_cache.positions[slots] = 0

    @torch.inference_mode()
    def compact(self) -> torch.Tensor:
        """Drop the free slots; -> (old S,) the new index of each old slot (-1: dropped)."""
        keep = self.active.nonzero()[:, 0]
        where = torch.full((self.slots,), -1, dtype=torch.long, device=keep.device)
        where[keep] = torch.arange(len(keep), device=keep.device)
        own = self.self_attention_cache
        own.keys, own.values, own.positions = own.keys[:, keep], own.values[:, keep], own.positions[keep]
        self.enc_mask, self.active = self.enc_mask[keep], self.active[keep]
        self.cross_attention_cache.keep(keep)
        width = int(self.enc_mask.any(0).nonzero().max()) + 1 if self.enc_mask.any() else 0
        if width < self.enc_mask.shape[1]:  # the longest prompts have left: read fewer keys
            self.enc_mask = self.enc_mask[:, :width]
            for c in self.cross_attention_cache.layers:
                c.keys, c.values = c.keys[:, :, :width], c.values[:, :, :width]
        return where

    @torch.inference_mode()
    def step(self, last_ids: torch.Tensor) -> torch.Tensor:
        own = self.self_attention_cache
        own.begin()
        mask = None if bool(self.enc_mask.all()) else self.enc_mask
        h, _ = self.model.decoder(last_ids, None, mask, None, self, False)
        own.positions = own.positions + self.active  # a free slot stays at position 0
        return F.linear(h[:, -1], self.weight, self.bias).to(torch.float32)


def _pad(x: torch.Tensor, width: int, value, dim: int = 1) -> torch.Tensor:
    """``x`` padded with ``value`` to ``width`` along ``dim``."""
    if x.shape[dim] >= width:
        return x
    shape = list(x.shape)
    shape[dim] = width - x.shape[dim]
    return torch.cat((x, x.new_full(shape, value)), dim)

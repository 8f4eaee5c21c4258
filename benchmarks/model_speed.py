"""Speed of UnioForConditionalGeneration against transformers' T5ForConditionalGeneration.

    python benchmarks/model_speed.py                       # tiny + small on CPU (fp32)
    python benchmarks/model_speed.py --presets base        # on a GPU machine: bf16 autocast

Both models get identical d_model / layers / heads / MLP width (T5 with its gated-GELU MLP, the gated
counterpart of unio's SwiGLU), encoder and target lengths, vocabulary size and batch:
(a) a training step: forward + backward + AdamW step;
(b'') greedy generation where each row ends at its own length (MIXED_LENGTHS, forced alike on both by
    the same logits processor): unio's lean loop drops ended rows from the batch; T5's generate()
    keeps decoding them as padding until the longest ends;
(b) greedy generation of exactly --new-tokens tokens for --gen-batch samples with the KV cache, both
    models through transformers' generate(), and unio through its own greedy loop
    (unio.model.decoding.greedy_decode: same network calls, a preallocated KV cache, no generate()
    machinery; what the Pipeline uses for greedy decoding); and beam search with 3 beams, both
    through generate();
(b') a training step on a mixed-task batch as the trainers see it: targets of very different
    lengths (MIXED_LENGTHS: short answers, captions, box lists, two 65-token image-code targets)
    right-padded with -100 to 72 (and T5 also cut to the longest target, 65, as transformers'
    collator pads; both T5 rows are reported); T5 takes plain labels, unio
    with ``logits_mask`` as unio's trainer passes it (length-grouped decoding, no output layer on padding);
(c) MFU: unio's training-step matmul FLOP/s (UnioForConditionalGeneration.estimate_flops) over the
    peak matmul FLOP/s measured in the same process, the best of a few large matmuls run in the same
    interleaving (fp32 on CPU, bf16 on GPU).
Timings interleave the two models and report the median of --repeats runs after --warmup runs, so
load from other processes hits both alike. Prints a table and writes JSON (--out).

``--stem-study`` instead trains the tiny model with the "linear" and the "conv" patch stem on a toy
box-reading task and prints the loss curves (the evidence behind PatchStem's default). Measured:
training the tiny preset to read a square's box and colour (``--stem-study --stem-steps 500``, batch
16, AdamW 1e-3), mean loss over steps 451-500 was 1.22 with "linear" and 1.81 with "conv" (3.08 vs
3.18 over steps 1-50; results/stem_study.json). On the shapes world itself (the shapes-tiny recipe,
300 steps, one seed; results/stem_study_shapes.json) the mean training loss over steps 251-300 was
1.99 with "linear" and 2.09 with "conv": "conv" was ahead on VQA and classification (what an object
is) and behind on captions, boxes and grounding (where it is).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from unio.model import UnioConfig, UnioForConditionalGeneration
from unio.model.decoding import greedy_decode

hf_logging.set_verbosity_error()


# ----------------------------------------------------------------------------- measurement helpers
def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory in the process instead of unmapping it (any allocator that caches,
    e.g. tcmalloc or jemalloc, does the same). Otherwise every large tensor is a fresh mmap whose pages
    fault in on first touch; on a VM that hands free pages back to its host each fault is slow, and here
    it made the backward pass's gradient concatenations (fused q/k/v, fused gate/up) 4x slower."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved_times(fns: dict, warmup: int, repeats: int, device) -> dict[str, list[float]]:
    """Seconds of each callable per repeat, run alternately so background load hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return times


def peak_matmuls(device, dtype) -> dict:
    """Matmuls big enough to run at the machine's practical peak, square and model-shaped (thin-K ones
    run a few percent faster on CPU): {name: (callable, FLOPs)}. The peak is the best of them."""
    shapes = [(2048, 2048, 2048), (2048, 512, 4096), (1024, 1024, 4096)] if device.type == "cpu" else \
        [(8192, 8192, 8192), (8192, 2048, 8192)]
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
        out[f"peak {m}x{k}x{n}"] = ((lambda a=a, b=b: torch.mm(a, b)), 2 * m * k * n)
    return out


# ----------------------------------------------------------------------------- the two models
def build_pair(preset: str, vocab_size: int, device, seed: int = 0):
    cfg = UnioConfig.preset(preset, vocab_size=vocab_size)
    torch.manual_seed(seed)
    unio = UnioForConditionalGeneration(cfg)
    t5cfg = T5Config(vocab_size=vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
                     num_layers=cfg.encoder_layers, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.num_heads,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=cfg.pad_token_id,
                     eos_token_id=cfg.eos_token_id, decoder_start_token_id=cfg.decoder_start_token_id)
    torch.manual_seed(seed)
    t5 = T5ForConditionalGeneration(t5cfg)
    return cfg, unio.to(device), t5.to(device)


def make_batch(cfg, batch: int, prompt_len: int, tgt_len: int, device, seed: int = 0):
    """unio reads patches + prompt; T5 reads as many plain tokens, so both encoders see the same length."""
    g = torch.Generator().manual_seed(seed)
    src_len = cfg.num_patches + prompt_len
    low, high = 4, cfg.vocab_size
    return {
        "pixel_values": (torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device),
        "prompt": torch.randint(low, high, (batch, prompt_len), generator=g).to(device),
        "t5_input": torch.randint(low, high, (batch, src_len), generator=g).to(device),
        "labels": torch.randint(low, high, (batch, tgt_len), generator=g).to(device),
        "src_len": src_len,
    }


# Target lengths of a 16-sample batch drawn like the shapes-tiny mixture (26 % of the padded 16 x 72
# target positions are real, as in measured shapes-tiny batches: 22-25 %).
MIXED_LENGTHS = [2, 3, 3, 3, 2, 3, 12, 18, 25, 16, 5, 15, 30, 40, 65, 65]


def mixed_labels(labels: torch.Tensor, width: int = 72) -> torch.Tensor:
    B = labels.shape[0]
    lengths = [MIXED_LENGTHS[i % len(MIXED_LENGTHS)] for i in range(B)]
    out = torch.full((B, width), -100, dtype=labels.dtype, device=labels.device)
    for i, n in enumerate(lengths):
        out[i, :n] = labels[i, torch.arange(n) % labels.shape[1]]
    return out


def train_step_fn(model, kwargs, autocast):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with autocast():
            loss = model(**kwargs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def generate_fn(model, kwargs, new_tokens, autocast):
    model.eval()

    @torch.no_grad()
    def gen():
        with autocast():
            out = model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 num_beams=1, use_cache=True)
        assert out.shape[1] == new_tokens + 1, out.shape
    return gen


def lean_fn(model, kwargs, new_tokens, autocast):
    """unio's own greedy loop (unio.model.decoding), as the Pipeline runs greedy tasks; eos can never
    match, so it writes exactly ``new_tokens`` tokens like the generate() rows."""
    model.eval()

    def gen():
        with autocast():
            out = greedy_decode(model, max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=0,
                                decoder_start_token_id=model.config.decoder_start_token_id, **kwargs)
        assert out.sequences.shape[1] == new_tokens + 1, out.sequences.shape
    return gen


class EndAt(LogitsProcessor):
    """Row r writes its end token as its ``lengths[r]``-th token and never before: the answer lengths
    of a mixed-task batch, forced alike on both models (random weights choose no lengths)."""

    def __init__(self, lengths, eos: int):
        self.lengths, self.eos = torch.tensor(lengths), eos

    def __call__(self, input_ids, scores):
        out = scores.clone()
        out[:, self.eos] = float("-inf")
        due = (self.lengths.to(scores.device) == input_ids.shape[1])  # input_ids: start id + tokens so far
        out[due] = float("-inf")
        out[due, self.eos] = 0.0
        return out


def mixed_gen_fns(unio, t5, unio_in, t5_in, new_tokens, autocast):
    """Greedy generation of a batch whose rows end at MIXED_LENGTHS (capped at ``new_tokens``): unio
    through its lean loop, whose ended rows leave the batch; T5 through generate(), which decodes
    ended rows (as pad) until the longest ends. Both check that every row ended where it should."""
    B = t5_in["input_ids"].shape[0]
    lengths = [min(MIXED_LENGTHS[i % len(MIXED_LENGTHS)], new_tokens) for i in range(B)]
    unio.eval(), t5.eval()

    def check(seqs, eos):
        got = [(row[1:] == eos).nonzero()[0, 0].item() + 1 for row in seqs.cpu()]
        assert got == lengths, (got, lengths)

    def lean():
        with autocast():
            out = greedy_decode(unio, max_new_tokens=new_tokens, logits_processor=[EndAt(lengths, unio.config.eos_token_id)],
                                eos_token_id=unio.config.eos_token_id, pad_token_id=unio.config.pad_token_id,
                                decoder_start_token_id=unio.config.decoder_start_token_id, **unio_in)
        check(out.sequences, unio.config.eos_token_id)

    @torch.no_grad()
    def t5_gen():
        with autocast():
            out = t5.generate(**t5_in, max_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              logits_processor=LogitsProcessorList([EndAt(lengths, t5.config.eos_token_id)]))
        check(out, t5.config.eos_token_id)
    return {"unio_lean": lean, "t5": t5_gen}


def beam_fn(model, kwargs, new_tokens, autocast, beams: int = 3):
    model.eval()

    @torch.no_grad()
    def gen():
        with autocast():
            model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           num_beams=beams, use_cache=True)
    return gen


def bench_preset(preset, args, device, dtype, autocast):
    cfg, unio, t5 = build_pair(preset, args.vocab_size, device)
    b = make_batch(cfg, args.batch, args.prompt_len, args.target_len, device)
    peaks = peak_matmuls(device, dtype)
    # The peak matmuls run inside the same interleaving, so MFU compares FLOP/s measured under the same load.
    train = interleaved_times({
        "unio": train_step_fn(unio, dict(pixel_values=b["pixel_values"], input_ids=b["prompt"], labels=b["labels"]),
                              autocast),
        "t5": train_step_fn(t5, dict(input_ids=b["t5_input"], labels=b["labels"]), autocast),
        **{name: fn for name, (fn, _) in peaks.items()},
    }, args.warmup, args.repeats, device)
    peak = [max(f / train[name][i] for name, (_, f) in peaks.items()) for i in range(args.repeats)]  # FLOP/s
    mixed = mixed_labels(b["labels"])
    train_mixed = interleaved_times({
        "unio": train_step_fn(unio, dict(pixel_values=b["pixel_values"], input_ids=b["prompt"], labels=mixed,
                                         logits_mask=mixed != -100), autocast),
        "t5": train_step_fn(t5, dict(input_ids=b["t5_input"], labels=mixed), autocast),
        "t5_longest": train_step_fn(t5, dict(input_ids=b["t5_input"], labels=mixed[:, :max(MIXED_LENGTHS)].contiguous()),
                                    autocast),
    }, args.warmup, args.repeats, device)
    g = make_batch(cfg, args.gen_batch, args.prompt_len, args.target_len, device, seed=1)
    unio_in, t5_in = dict(pixel_values=g["pixel_values"], input_ids=g["prompt"]), dict(input_ids=g["t5_input"])
    gen = interleaved_times({
        "unio": generate_fn(unio, unio_in, args.new_tokens, autocast),
        "unio_lean": lean_fn(unio, unio_in, args.new_tokens, autocast),
        "t5": generate_fn(t5, t5_in, args.new_tokens, autocast),
    }, max(1, args.warmup // 2), args.repeats, device)
    mixed_gen = interleaved_times(mixed_gen_fns(unio, t5, unio_in, t5_in, args.new_tokens, autocast),
                                  max(1, args.warmup // 2), args.repeats, device)
    beam = interleaved_times({
        "unio": beam_fn(unio, unio_in, args.new_tokens, autocast),
        "t5": beam_fn(t5, t5_in, args.new_tokens, autocast),
    }, max(1, args.warmup // 2), args.repeats, device) if args.beam_repeats else None
    flops = unio.estimate_flops(b["src_len"], args.target_len, args.batch, backward=True)
    med = statistics.median
    return {
        "params_unio": unio.num_parameters(), "params_t5": t5.num_parameters(),
        "unio_train_step_s": med(train["unio"]), "t5_train_step_s": med(train["t5"]),
        "train_speedup_vs_t5": med(t / u for t, u in zip(train["t5"], train["unio"])),
        "unio_train_mixed_step_s": med(train_mixed["unio"]), "t5_train_mixed_step_s": med(train_mixed["t5"]),
        "train_mixed_speedup_vs_t5": med(t / u for t, u in zip(train_mixed["t5"], train_mixed["unio"])),
        "t5_train_mixed_longest_step_s": med(train_mixed["t5_longest"]),
        "train_mixed_speedup_vs_t5_longest": med(t / u for t, u in zip(train_mixed["t5_longest"], train_mixed["unio"])),
        "unio_generate_s": med(gen["unio"]), "unio_lean_generate_s": med(gen["unio_lean"]),
        "t5_generate_s": med(gen["t5"]),
        "generate_speedup_vs_t5": med(t / u for t, u in zip(gen["t5"], gen["unio"])),
        "lean_generate_speedup_vs_t5": med(t / u for t, u in zip(gen["t5"], gen["unio_lean"])),
        "unio_lean_generate_mixed_s": med(mixed_gen["unio_lean"]), "t5_generate_mixed_s": med(mixed_gen["t5"]),
        "lean_generate_mixed_speedup_vs_t5": med(t / u for t, u in zip(mixed_gen["t5"], mixed_gen["unio_lean"])),
        **({"unio_beam3_s": med(beam["unio"]), "t5_beam3_s": med(beam["t5"]),
            "beam3_speedup_vs_t5": med(t / u for t, u in zip(beam["t5"], beam["unio"]))} if beam else {}),
        "peak_matmul_flops_per_s": med(peak),
        "unio_train_flops_per_s": flops / med(train["unio"]),
        "mfu": med(flops / u / p for u, p in zip(train["unio"], peak)),
        "unio_train_tokens_per_s": args.batch * args.target_len / med(train["unio"]),
    }


# ----------------------------------------------------------------------------- stem study
def stem_study(args):
    """Tiny model, "linear" vs "conv" stem, on a toy task whose answer needs the pixels: read the box
    and colour of one square on a noisy background (4 location tokens + 1 colour token + eos)."""
    bins, colours = 32, 4
    V, loc0, col0 = 128, 16, 16 + bins

    def batch(n, g):
        S = 64
        img = torch.rand(n, 3, S, S, generator=g) * 0.4 - 0.2
        palette = torch.tensor([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], dtype=torch.float)
        labels = torch.empty(n, 6, dtype=torch.long)
        for i in range(n):
            w, h = (int(v) for v in torch.randint(8, 28, (2,), generator=g))
            x, y = int(torch.randint(0, S - w, (1,), generator=g)), int(torch.randint(0, S - h, (1,), generator=g))
            c = int(torch.randint(0, colours, (1,), generator=g))
            img[i, :, y:y + h, x:x + w] = palette[c][:, None, None]
            box = torch.tensor([x, y, x + w, y + h]) * bins // S
            labels[i] = torch.tensor([*(loc0 + box.clamp(max=bins - 1)).tolist(), col0 + c, 1])
        return img, torch.full((n, 1), 5), labels

    results = {}
    for stem in ("linear", "conv"):
        torch.manual_seed(0)
        cfg = UnioConfig.preset("tiny", vocab_size=V, patch_stem=stem)
        model = UnioForConditionalGeneration(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
        g, curve, t0 = torch.Generator().manual_seed(0), [], time.perf_counter()
        for step in range(1, args.stem_steps + 1):
            px, prompt, labels = batch(args.batch, g)
            loss = model(pixel_values=px, input_ids=prompt, labels=labels).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            curve.append(loss.item())
            if step % 50 == 0:
                print(f"{stem:6s} step {step:4d} loss {statistics.mean(curve[-50:]):.3f}", flush=True)
        results[stem] = {"loss_every_50": [round(statistics.mean(curve[i:i + 50]), 4) for i in range(0, len(curve), 50)],
                         "seconds": time.perf_counter() - t0}
    return results


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=None, help="default: tiny small (CPU), base (GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vocab-size", type=int, default=3456,
                   help="unified vocabulary size; default: the shapes world's (512 text pieces + 1000 location bins "
                        "+ 1920 FSQ codes, padded to a multiple of 64)")
    p.add_argument("--batch", type=int, default=16, help="training batch")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens; the encoder also reads 64 patches")
    p.add_argument("--target-len", type=int, default=64)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine, OpenMP threads that lose their core stall "
                        "each other; use all cores of an idle machine)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc's allocator as it is (see keep_freed_memory); both models are affected")
    p.add_argument("--out", default="benchmarks/results/model_speed.json")
    p.add_argument("--beam-repeats", type=int, default=1, help="0: skip the beam-3 rows")
    p.add_argument("--stem-study", action="store_true")
    p.add_argument("--stem-steps", type=int, default=400)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    malloc_tuned = False if args.no_malloc_tuning else keep_freed_memory()
    device = torch.device(args.device)

    if args.stem_study:
        res = stem_study(args)
        out = Path(args.out).with_name("stem_study.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": " ".join(sys.argv), **res}, indent=2))
        print(f"wrote {out}")
        return

    gpu = device.type == "cuda"
    presets = args.presets or (["base"] if gpu else ["tiny", "small"])
    dtype = torch.bfloat16 if gpu else torch.float32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu else nullcontext
    meta = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "device": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "dtype": str(dtype), "malloc_tuned": malloc_tuned,
            "batch": args.batch, "encoder_len": 64 + args.prompt_len, "target_len": args.target_len,
            "gen_batch": args.gen_batch, "new_tokens": args.new_tokens, "vocab_size": args.vocab_size,
            "warmup": args.warmup, "repeats": args.repeats}
    print(f"{meta['threads']} threads, {dtype}, glibc keeps freed memory: {malloc_tuned}; "
          f"medians of {args.repeats} interleaved repeats", flush=True)
    results = {}
    for preset in presets:
        results[preset] = bench_preset(preset, args, device, dtype, autocast)
        print(f"{preset}: done", flush=True)

    head = f"{'preset':7s} {'row':34s} {'unio':>9s} {'t5':>9s} {'t5 / unio':>10s}"
    print(head + "\n" + "-" * len(head))
    for preset, r in results.items():
        rows = [("train step (uniform targets)", r["unio_train_step_s"], r["t5_train_step_s"]),
                ("train step (mixed; T5 padded to 72)", r["unio_train_mixed_step_s"], r["t5_train_mixed_step_s"]),
                ("train step (mixed; T5 to longest)", r["unio_train_mixed_step_s"], r["t5_train_mixed_longest_step_s"]),
                ("greedy: generate() both", r["unio_generate_s"], r["t5_generate_s"]),
                ("greedy: unio's loop vs T5 generate()", r["unio_lean_generate_s"], r["t5_generate_s"]),
                ("greedy, mixed lengths: loop vs T5", r["unio_lean_generate_mixed_s"], r["t5_generate_mixed_s"])]
        if "unio_beam3_s" in r:
            rows.append(("beam 3: generate() both", r["unio_beam3_s"], r["t5_beam3_s"]))
        for name, u, t in rows:
            print(f"{preset:7s} {name:34s} {u:8.3f}s {t:8.3f}s {t / u:9.2f}x")
        print(f"{preset:7s} {'params / peak matmul / MFU':34s} {r['params_unio'] / 1e6:7.1f}M "
              f"{r['peak_matmul_flops_per_s'] / 1e9:6.1f} GF/s {100 * r['mfu']:5.1f}%")
    print("(medians over interleaved repeats; 't5 / unio' is the speed-up of unio: unio's mixed row computes logits "
          "only at targets and groups the decoder by target length, which T5 does not get; in the mixed-lengths "
          "generation rows end at MIXED_LENGTHS on both sides and unio's ended rows leave the batch, while T5's "
          "generate() decodes them as padding until the longest ends)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "presets": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

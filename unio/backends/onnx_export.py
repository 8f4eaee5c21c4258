"""ONNX graphs of an export's network, written beside its safetensors weights (``unio export DIR OUT --onnx``).

    encoder.onnx   pixel_values (B, 3, S, S) f32, has_image (B,) bool, patch_mask (B, G, G) bool,
                   input_ids (B, L) i64, attention_mask (B, L) i64
                   -> cross_keys, cross_values (layers, B, H, N, D) f32, encoder_mask (B, N) bool
    decoder.onnx   input_ids (B, T) i64, past_keys, past_values (layers, B, H, P, D) f32,
                   cross_keys, cross_values (layers, B, H, N, D) f32, encoder_mask (B, N) bool
                   -> logits (B, T, V) f32, present_keys, present_values (layers, B, H, P + T, D) f32

N = G * G patches + L prompt tokens. The encoder graph ends with each decoder layer's cross-attention
keys and values of the encoder states (computed once per generation, as the torch model keeps them
in its cache); the decoder graph is one step over T new ids after P cached ones, so decoding feeds
one id at a time with the present keys/values of the last step (incremental, not quadratic), and
teacher forcing (scoring a target) is one call with P = 0. Every axis but the model's own sizes is
dynamic. The graphs run the torch modules themselves (traced), so they compute what the network
computes; :func:`export_onnx` checks that onnxruntime reproduces the torch outputs before it records
the graphs in ``unio.json`` (entry ``onnx``) with the vocabulary fingerprint, which each graph also
carries in its metadata (``unio.vocab_fingerprint``) so that graphs and tokenizers that do not
belong together are refused at load (:mod:`.ort`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import (DECODER_FILE, ENCODER_FILE, FINGERPRINT_KEY, GRAPH_KEY, ONNX_FORMAT_VERSION, ONNX_KEY,
               require)
from ..errors import BackendError, CheckpointError
from ..export import META_NAME, export_path, list_models, load_export, read_meta
from ..model.modeling_unio import rotary_tables

__all__ = ["export_onnx", "EncoderGraph", "DecoderGraph", "OPSET"]

OPSET = 18
ENCODER_INPUTS = ("pixel_values", "has_image", "patch_mask", "input_ids", "attention_mask")
ENCODER_OUTPUTS = ("cross_keys", "cross_values", "encoder_mask")
DECODER_INPUTS = ("input_ids", "past_keys", "past_values", "cross_keys", "cross_values", "encoder_mask")
DECODER_OUTPUTS = ("logits", "present_keys", "present_values")
_KV = {1: "batch", 3: "encoder_length"}
ENCODER_AXES = {"pixel_values": {0: "batch"}, "has_image": {0: "batch"}, "patch_mask": {0: "batch"},
                "input_ids": {0: "batch", 1: "prompt_length"}, "attention_mask": {0: "batch", 1: "prompt_length"},
                "cross_keys": _KV, "cross_values": _KV, "encoder_mask": {0: "batch", 1: "encoder_length"}}
DECODER_AXES = {"input_ids": {0: "batch", 1: "new_length"}, "past_keys": {1: "batch", 3: "past_length"},
                "past_values": {1: "batch", 3: "past_length"}, "cross_keys": _KV, "cross_values": _KV,
                "encoder_mask": {0: "batch", 1: "encoder_length"}, "logits": {0: "batch", 1: "new_length"},
                "present_keys": {1: "batch", 3: "total_length"}, "present_values": {1: "batch", 3: "total_length"}}


# ---------------------------------------------------------------------- the graphs
class _SelfCache:
    """The self-attention half of the cache the decoder layers read, over explicit past tensors:
    ``update`` appends a layer's new keys/values to its past and keeps the result as present."""

    def __init__(self, keys, values):
        self.keys, self.values, self.present_keys, self.present_values = keys, values, [], []

    def update(self, k, v, layer: int):
        k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
        self.present_keys.append(k)
        self.present_values.append(v)
        return k, v


class _CrossLayer:
    def __init__(self, keys, values):
        self.keys, self.values = keys, values


class _CrossCache:
    def __init__(self, keys, values, layers: int):
        self.layers = [_CrossLayer(keys[i], values[i]) for i in range(layers)]


class _StepCache:
    """What :class:`~unio.model.modeling_unio.DecoderLayer` reads of transformers' EncoderDecoderCache,
    with the cross-attention keys/values given (the encoder graph's outputs)."""

    def __init__(self, past_keys, past_values, cross_keys, cross_values, layers: int):
        self.self_attention_cache = _SelfCache(past_keys, past_values)
        self.cross_attention_cache = _CrossCache(cross_keys, cross_values, layers)
        self.is_updated = {i: True for i in range(layers)}


class EncoderGraph(nn.Module):
    """The encoder of ``model`` over [patches ; prompt] with explicit masks, then the cross-attention
    keys and values of every decoder layer (see the module's documentation for the signature)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, has_image, patch_mask, input_ids, attention_mask):
        model, config = self.model, self.model.config
        enc = model.encoder
        img = enc.embed_image(pixel_values, patch_mask)  # (B, G*G, C)
        B, n_img = img.shape[:2]
        x = torch.cat([img, enc.embed_tokens(input_ids) + enc.modality_embed[1]], dim=1)
        mask = torch.cat([has_image[:, None].expand(B, n_img), attention_mask.bool()], dim=1)  # (B, N)
        # rotary tables: identity for patches, positions 0..L-1 for prompt tokens (as UnioEncoder.forward)
        cos, sin = rotary_tables(torch.arange(input_ids.shape[1]), config.head_dim, config.rope_theta, x.dtype)
        cos = torch.cat((cos.new_ones((n_img,) + cos.shape[1:]), cos))
        sin = torch.cat((sin.new_zeros((n_img,) + sin.shape[1:]), sin))
        attn_mask = mask[:, None, None, :]
        for layer in enc.layers:
            x = layer(x, cos=cos, sin=sin, attn_mask=attn_mask)
        x = enc.norm(x)
        N, keys, values = x.shape[1], [], []
        for layer in model.decoder.layers:  # as CrossAttention computes them on its first call
            attn = layer.cross_attn
            k, v = attn.kv(x).view(B, N, 2, attn.num_heads, attn.head_dim).unbind(2)
            keys.append(attn.k_norm(k).transpose(1, 2))
            values.append(v.transpose(1, 2))
        return torch.stack(keys), torch.stack(values), mask


class DecoderGraph(nn.Module):
    """One decoder step of ``model`` over new ids after cached ones, through its own decoder layers."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        config = model.config
        bias = None
        if config.used_vocab_size < config.vocab_size:  # padding ids are never predicted (as forward does)
            bias = torch.zeros(config.vocab_size)
            bias[config.used_vocab_size:] = float("-inf")
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, input_ids, past_keys, past_values, cross_keys, cross_values, encoder_mask):
        model, config = self.model, self.model.config
        dec = model.decoder
        x = dec.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1]) + past_keys.shape[3]
        cos, sin = rotary_tables(positions, config.head_dim, config.rope_theta, x.dtype)
        keys = torch.arange(input_ids.shape[1] + past_keys.shape[3])
        self_mask = (keys[None, :] <= positions[:, None])[None, None]  # (1, 1, T, P + T): causal
        cache = _StepCache(past_keys, past_values, cross_keys, cross_values, len(dec.layers))
        for layer in dec.layers:
            x = layer(x, None, cos=cos, sin=sin, self_mask=self_mask, encoder_mask=encoder_mask[:, None, None, :],
                      past_key_values=cache)
        logits = F.linear(dec.norm(x), model.shared.weight, self.bias)
        done = cache.self_attention_cache
        return logits, torch.stack(done.present_keys), torch.stack(done.present_values)


def example_inputs(config, batch: int = 2, prompt: int = 5, past: int = 3, new: int = 2):
    """Inputs of both graphs (tracing and checking): a mixed batch, one row with an image and one without."""
    g = torch.Generator().manual_seed(0)
    S, G, layers = config.image_size, config.grid_size, config.decoder_layers
    H, D = config.num_heads, config.head_dim
    text = (4, min(config.used_vocab_size, 64))
    has_image = torch.arange(batch) % 2 == 0
    patch_mask = torch.zeros(batch, G, G, dtype=torch.bool)
    patch_mask[0, : G // 2, : G // 2] = True
    attention_mask = torch.ones(batch, prompt, dtype=torch.long)
    attention_mask[1:, prompt - 1:] = 0
    encoder = (torch.rand(batch, 3, S, S, generator=g) * 2 - 1, has_image, patch_mask,
               torch.randint(*text, (batch, prompt), generator=g), attention_mask)
    N = G * G + prompt
    kv = (layers, batch, H, past, D)
    cross = (layers, batch, H, N, D)
    encoder_mask = torch.cat([has_image[:, None].expand(batch, G * G), attention_mask.bool()], 1)
    decoder = (torch.randint(*text, (batch, new), generator=g), torch.randn(kv, generator=g),
               torch.randn(kv, generator=g), torch.randn(cross, generator=g), torch.randn(cross, generator=g),
               encoder_mask)
    return encoder, decoder


# ---------------------------------------------------------------------- writing them
def export_onnx(src, out=None, *, opset: int = OPSET, check: bool = True) -> Path:
    """Write the ONNX graphs of the export ``src`` (a folder or a shipped model's name) into ``out``.

    ``out`` (default: ``src`` itself) becomes a copy of the export, weights and all, plus
    ``encoder.onnx`` and ``decoder.onnx`` and an ``onnx`` entry in its ``unio.json``; load it with
    ``unio.load(out, backend="onnxruntime")``. The graphs are float32 whatever the stored weights.
    An operator the exporter cannot write raises a :class:`BackendError` naming it.
    """
    onnx, = require("onnx")
    src_dir = export_path(src)
    meta = read_meta(src_dir)
    if meta.get("kind") == "adapters":  # unio.export's adapter exports hold no network of their own
        raise CheckpointError(f"{src_dir} holds LoRA adapters over a base model, and ONNX graphs hold a whole "
                              "network; export the run with its adapters merged: unio export RUN OUT --lora merged "
                              "--onnx")
    dst = Path(out) if out is not None else src_dir
    same = dst.exists() and dst.resolve() == src_dir.resolve()
    if same and str(src) in list_models() and not Path(str(src)).exists():
        raise CheckpointError(f"{src} is a model shipped with unio; write its ONNX export to a new folder "
                              f"(unio export {src} OUT --onnx)")
    if not same and dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise CheckpointError(f"{dst} exists and is not empty; pass a new folder, or the export itself to add "
                              "the graphs in place")
    model, ctx, _ = load_export(src_dir, device="cpu", dtype=torch.float32)
    model.eval()
    graphs = {"encoder": (EncoderGraph(model).eval(), ENCODER_FILE, ENCODER_INPUTS, ENCODER_OUTPUTS, ENCODER_AXES),
              "decoder": (DecoderGraph(model).eval(), DECODER_FILE, DECODER_INPUTS, DECODER_OUTPUTS, DECODER_AXES)}
    inputs = dict(zip(graphs, example_inputs(model.config)))
    parameters = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix=".unio-onnx-") as tmp:
        for name, (module, file, in_names, out_names, axes) in graphs.items():
            path = Path(tmp) / file
            _export_graph(module, inputs[name], path, in_names, out_names, axes, opset, name)
            graph = onnx.load(str(path), load_external_data=False)
            for key, value in ((GRAPH_KEY, name), (FINGERPRINT_KEY, ctx.vocab.fingerprint),
                               ("unio.onnx_format_version", str(ONNX_FORMAT_VERSION)),
                               ("unio.parameters", str(parameters))):
                graph.metadata_props.add(key=key, value=value)
            onnx.save(graph, str(path))
        if check:
            _check(model, inputs, Path(tmp))
        if not same:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src_dir, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data"))
        for file in os.listdir(tmp):
            shutil.move(os.path.join(tmp, file), dst / file)
    meta = json.loads((dst / META_NAME).read_text())
    meta[ONNX_KEY] = {"format_version": ONNX_FORMAT_VERSION, "encoder": ENCODER_FILE, "decoder": DECODER_FILE,
                      "opset": opset, "dtype": "float32", "vocab_fingerprint": ctx.vocab.fingerprint,
                      "parameters": parameters, "torch": torch.__version__, "onnx": onnx.__version__}
    staged = dst / f".{META_NAME}.new"
    staged.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(staged, dst / META_NAME)
    return dst


def _export_graph(module, args, path: Path, in_names, out_names, axes, opset: int, name: str) -> None:
    """torch.onnx's TorchScript exporter (2 s for the tiny preset; torch.export's takes ~15x longer),
    its trace warnings and its dump of the graph on failure kept off the terminal."""
    try:
        with torch.no_grad(), warnings.catch_warnings(), _output_hidden():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=list(in_names),
                              output_names=list(out_names), dynamic_axes=axes, do_constant_folding=True)
    except Exception as exc:  # the exporter's own errors name the operator it could not write
        text = str(exc)
        op = re.search(r"operator '?([\w.:]+)'?", text) or re.search(r"\b((?:aten|prim|onnx)::\w+)", text)
        if op:
            raise BackendError(f"the model cannot be written as ONNX: the {name} uses the operator {op.group(1)}, "
                               f"which torch {torch.__version__}'s exporter cannot write at opset {opset}; replace "
                               "that operation in the model (or try a newer torch), or run the model with the torch "
                               "backend") from exc
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise BackendError(f"the model cannot be written as ONNX: exporting the {name} failed ({first}); run the "
                           "model with the torch backend") from exc


@contextlib.contextmanager
def _output_hidden():
    """File descriptors 1 and 2 into a scratch file: the exporter writes from C++ (past sys.stdout/stderr)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 1)
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _check(model, inputs: dict, folder: Path) -> None:
    """onnxruntime runs the graphs as decoding does (the encoder, then the decoder over two ids and
    over two more after their cache) and gives the logits of the network's own teacher-forced pass."""
    ort, = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    encoder, decoder = (ort.InferenceSession(str(folder / f), options, providers=["CPUExecutionProvider"])
                        for f in (ENCODER_FILE, DECODER_FILE))
    enc_in = inputs["encoder"]
    ids = torch.cat([inputs["decoder"][0]] * 2, dim=1)  # (B, 4)
    with torch.no_grad():
        want = model(**dict(zip(ENCODER_INPUTS, enc_in)), decoder_input_ids=ids, use_cache=False).logits.numpy()
    keys, values, mask = encoder.run(list(ENCODER_OUTPUTS), {n: v.numpy() for n, v in zip(ENCODER_INPUTS, enc_in)})
    past = np.zeros(keys.shape[:3] + (0, keys.shape[4]), dtype=np.float32)
    first, pk, pv = decoder.run(list(DECODER_OUTPUTS), dict(zip(DECODER_INPUTS, (ids[:, :2].numpy(), past, past, keys,
                                                                                   values, mask))))
    second, _, _ = decoder.run(list(DECODER_OUTPUTS), dict(zip(DECODER_INPUTS, (ids[:, 2:].numpy(), pk, pv, keys,
                                                                                  values, mask))))
    got = np.concatenate([first, second], axis=1)
    finite = np.isfinite(want)
    if got.shape != want.shape or not np.array_equal(finite, np.isfinite(got)):
        raise BackendError("the exported graphs give logits of another shape or with other infinite values than the "
                           "network under onnxruntime; run the model with the torch backend")
    error = float(np.abs(got[finite].astype(np.float64) - want[finite]).max(initial=0.0))
    if error > 1e-3 * max(1.0, float(np.abs(want[finite]).max(initial=0.0))):
        raise BackendError(f"the exported graphs' logits differ from the network's by {error:.3g} under "
                           "onnxruntime; run the model with the torch backend")

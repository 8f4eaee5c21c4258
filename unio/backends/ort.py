"""The onnxruntime backend: ``unio.load(dir, backend="onnxruntime")`` runs the graphs that
``unio export DIR OUT --onnx`` wrote (:mod:`.onnx_export`).

:class:`OnnxModel` stands in for :class:`~unio.model.UnioForConditionalGeneration` where the
:class:`~unio.pipeline.Pipeline` calls the network, so every task takes the same path as under torch
(the same tokenizers, prompts, logits processors, parsing; the VQ image tokenizer stays a torch
module): greedy decoding goes through :func:`unio.model.decoding.greedy_decode` with this
model's steps (the encoder graph once, then the decoder graph one id at a time with its keys and
values), sampling (``do_sample=True``, temperature / top-k / top-p) through the same loop, and
teacher forcing (``pipe.score``, the reranking of image candidates) is one decoder call. Beam search
is transformers' ``generate`` and needs the torch backend: asking for it here raises a
:class:`~unio.errors.BackendError` saying so.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.generation.logits_process import (MinNewTokensLengthLogitsProcessor,
                                                    NoRepeatNGramLogitsProcessor,
                                                    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)
from transformers.modeling_outputs import Seq2SeqLMOutput

from . import DECODER_FILE, ENCODER_FILE, FINGERPRINT_KEY, GRAPH_KEY, ONNX_FORMAT_VERSION, ONNX_KEY, require
from .onnx_export import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS
from ..errors import BackendError, CheckpointError, InputError, VocabMismatchError
from ..export import META_NAME, PROMPTS_DIR, read_meta
from ..model import UnioConfig, check_vocab
from ..model.decoding import decode
from ..model.modeling_unio import shift_tokens_right
from ..tasks import TaskContext
from ..vocab import UnifiedVocab

__all__ = ["OnnxModel", "load_onnx_export", "GENERATE_OPTIONS"]

# generate() options the onnxruntime loop runs (num_beams only as 1; length_penalty only acts in beam search)
GENERATE_OPTIONS = frozenset({"max_new_tokens", "min_new_tokens", "do_sample", "num_beams", "temperature", "top_k",
                              "top_p", "repetition_penalty", "no_repeat_ngram_size", "length_penalty"})


def load_onnx_export(path, device=None, dtype=None, device_map=None):
    """-> (model, ctx, meta) of an export with ONNX graphs, as :func:`unio.export.load_export` gives them.

    The tokenizers in the folder must match the vocabulary fingerprint in ``unio.json``, and each
    graph's own fingerprint must match it too. ``device``: None (CUDA where this onnxruntime has it,
    else the CPU), "cpu" or "cuda"; the graphs are float32. onnxruntime runs on as many threads as
    torch does when the model loads (``torch.set_num_threads``).
    """
    ort, = require("onnxruntime")
    if device_map is not None:
        raise InputError("device_map spreads a torch model over devices; the onnxruntime backend takes "
                         "device='cpu' or 'cuda' instead")
    d = Path(path)
    meta = read_meta(d)
    info = meta.get(ONNX_KEY)
    if not isinstance(info, dict):
        raise CheckpointError(f"{d} holds no ONNX graphs (its {META_NAME} has no {ONNX_KEY!r} entry); write them with "
                              f"`unio export {d} OUT --onnx` and load OUT, or load {d} with backend='torch'")
    if int(info.get("format_version", 0)) > ONNX_FORMAT_VERSION:
        raise CheckpointError(f"the ONNX graphs in {d} were written by a newer unio (format "
                              f"{info['format_version']}); upgrade unio")
    files = {role: d / str(info.get(role) or default) for role, default in (("encoder", ENCODER_FILE),
                                                                              ("decoder", DECODER_FILE))}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"{d} is missing its ONNX graph file(s) {', '.join(missing)}; write them again with "
                              f"`unio export {d} {d} --onnx`")
    if dtype not in (None, "float32", "fp32", torch.float32):
        raise InputError(f"the ONNX graphs run in float32, not {dtype}; leave dtype out, or load with backend='torch'")
    ctx = _context(d, meta)
    config = UnioConfig.from_dict(json.loads((d / "config.json").read_text()))
    check_vocab(config, ctx.vocab)
    sessions = {role: _session(ort, file, _providers(ort, device)) for role, file in files.items()}
    for role, session in sessions.items():
        tags = session.get_modelmeta().custom_metadata_map
        if tags.get(GRAPH_KEY) != role:
            raise CheckpointError(f"{files[role]} is not a unio {role} graph (its metadata says "
                                  f"{tags.get(GRAPH_KEY)!r}); write the graphs again with `unio export {d} {d} --onnx`")
        if tags.get(FINGERPRINT_KEY) != meta.get("vocab_fingerprint"):
            raise VocabMismatchError(f"the {role} graph {files[role]} was exported with other tokenizers than the ones "
                                     f"in {d} (vocabulary fingerprint {str(tags.get(FINGERPRINT_KEY))[:12]}... vs "
                                     f"{str(meta.get('vocab_fingerprint'))[:12]}...); export the graphs from this "
                                     f"model again: unio export {d} {d} --onnx")
    generation = GenerationConfig.from_pretrained(d) if (d / "generation_config.json").is_file() \
        else GenerationConfig.from_model_config(config)
    model = OnnxModel(sessions["encoder"], sessions["decoder"], config, generation,
                      parameters=int(info.get("parameters") or 0))
    return model, ctx, meta


def _context(d: Path, meta: dict) -> TaskContext:
    """The export's tokenizers, refused when they do not match its vocabulary fingerprint."""
    ctx = TaskContext.from_dir(d, image_size=meta["image_size"], patch_size=meta["patch_size"],
                               prompts_dir=d / PROMPTS_DIR if (d / PROMPTS_DIR).is_dir() else None,
                               num_bins=meta.get("num_bins", 1000), classes=meta.get("classes") or {})
    if ctx.vocab.fingerprint != meta.get("vocab_fingerprint"):
        if isinstance(meta.get("vocab"), dict):  # names the part that differs
            UnifiedVocab.from_dict(meta["vocab"]).check(ctx.vocab, what=f"the tokenizers in {d}")
        raise VocabMismatchError(f"the tokenizers in {d} do not match the vocabulary fingerprint in {META_NAME}; "
                                 "re-export the model with the tokenizers it was trained with")
    return ctx


def _providers(ort, device) -> list[str]:
    have = ort.get_available_providers()
    kind = torch.device(device).type if device is not None else None
    if kind == "cuda" or (kind is None and "CUDAExecutionProvider" in have):
        if "CUDAExecutionProvider" not in have:
            raise BackendError("this onnxruntime has no CUDA provider; install onnxruntime-gpu, or load with "
                               "device='cpu'")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind not in (None, "cpu"):
        raise InputError(f"the onnxruntime backend runs on 'cpu' or 'cuda', not {device!r}")
    return ["CPUExecutionProvider"]


def _session(ort, path: Path, providers: list[str]):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime's own errors: a truncated or foreign file
        raise CheckpointError(f"onnxruntime cannot read {path} ({str(exc).strip().splitlines()[0]}); write the "
                              f"graphs again with `unio export {path.parent} {path.parent} --onnx`") from None


class OnnxModel:
    """The network's stand-in over two onnxruntime sessions: what the Pipeline and the decoding loop
    call (``config``, ``device``, ``dtype``, ``decode_steps``, ``generate``, teacher-forced ``__call__``,
    ``compute_transition_scores``), with torch tensors in and out."""

    compute_transition_scores = GenerationMixin.compute_transition_scores  # reads config.vocab_size only

    def __init__(self, encoder, decoder, config: UnioConfig, generation_config: GenerationConfig | None = None,
                 parameters: int = 0):
        self.encoder, self.decoder, self.config = encoder, decoder, config
        self.generation_config = generation_config or GenerationConfig.from_model_config(config)
        self.parameters_count = int(parameters)
        self.device, self.dtype = torch.device("cpu"), torch.float32  # where the inputs and logits live

    def __repr__(self) -> str:
        return f"OnnxModel({self.parameters_count / 1e6:.1f}M parameters, {self.encoder.get_providers()[0]})"

    def num_parameters(self) -> int:
        return self.parameters_count

    def eval(self) -> "OnnxModel":
        return self

    # ------------------------------------------------------------------ the graphs
    def encode(self, pixel_values=None, input_ids=None, attention_mask=None, patch_mask=None, has_image=None):
        """-> (cross_keys, cross_values, encoder_mask) numpy arrays of a collated batch (the model's
        forward arguments; any may be None as there)."""
        c = self.config
        G = c.grid_size
        if input_ids is None and pixel_values is None:
            raise InputError("the encoder needs pixel_values, input_ids, or both")
        B = (pixel_values if pixel_values is not None else input_ids).shape[0]
        if input_ids is None:
            input_ids = torch.zeros((B, 0), dtype=torch.long)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long)
        no_image = pixel_values is None
        if no_image:  # image-less rows: zero pixels that nothing attends to, then dropped (below)
            if patch_mask is not None:
                raise InputError("patch_mask was given without pixel_values; pass the image whose patches it masks")
            pixel_values = torch.zeros(B, 3, c.image_size, c.image_size)
            has_image = torch.zeros(B, dtype=torch.bool)
        S = c.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, S, S):
            raise InputError(f"pixel_values must be (B, 3, {S}, {S}) (images letterboxed to image_size={S}, "
                             f"e.g. with unio.images.letterbox), got {tuple(pixel_values.shape)}")
        if input_ids.shape[0] != B:
            raise InputError(f"pixel_values hold {B} images but input_ids hold {input_ids.shape[0]} prompts")
        if has_image is None:
            has_image = torch.ones(B, dtype=torch.bool)
        patch_mask = torch.zeros(B, G, G, dtype=torch.bool) if patch_mask is None \
            else torch.as_tensor(patch_mask, dtype=torch.bool).reshape(B, G, G)
        values = (pixel_values.float(), torch.as_tensor(has_image, dtype=torch.bool), patch_mask,
                  input_ids.long(), torch.as_tensor(attention_mask).long())
        feed = {name: np.ascontiguousarray(v.detach().cpu().numpy()) for name, v in zip(ENCODER_INPUTS, values)}
        if int(feed["input_ids"].size) and (feed["input_ids"].min() < 0 or feed["input_ids"].max() >= c.vocab_size):
            raise InputError(f"input_ids must be global ids in [0, {c.vocab_size}) (pad prompts with the pad id)")
        keys, vals, mask = self.encoder.run(list(ENCODER_OUTPUTS), feed)
        if no_image:  # the patches were masked out: dropping them is exact, and cheaper at every step
            keys, vals, mask = (np.ascontiguousarray(keys[:, :, :, G * G:]),
                                np.ascontiguousarray(vals[:, :, :, G * G:]), np.ascontiguousarray(mask[:, G * G:]))
        if not mask.any(axis=1).all():
            raise InputError("a sample has neither an image (has_image=False) nor any prompt token; give every "
                             "sample at least one of the two")
        return keys, vals, mask

    def step(self, input_ids, past_keys, past_values, cross_keys, cross_values, encoder_mask):
        """One decoder call: -> (logits (B, T, V), present_keys, present_values) numpy arrays."""
        feed = dict(zip(DECODER_INPUTS, (np.ascontiguousarray(input_ids, dtype=np.int64), past_keys, past_values,
                                         cross_keys, cross_values, encoder_mask)))
        return self.decoder.run(list(DECODER_OUTPUTS), feed)

    def empty_cache(self, batch: int) -> np.ndarray:
        c = self.config
        return np.zeros((c.decoder_layers, batch, c.num_heads, 0, c.head_dim), dtype=np.float32)

    # ------------------------------------------------------------------ what the Pipeline calls
    def decode_steps(self, max_new_tokens: int, **inputs) -> "_Steps":
        """The decoding steps :func:`unio.model.decoding.decode` runs (``greedy_decode`` asks for them)."""
        return _Steps(self, *self.encode(**inputs))

    def __call__(self, pixel_values=None, input_ids=None, attention_mask=None, patch_mask=None, has_image=None,
                 decoder_input_ids=None, labels=None, **unsupported) -> Seq2SeqLMOutput:
        """Teacher forcing: the logits (B, T, V) of every target position, in one decoder call."""
        if unsupported:
            raise BackendError(f"the onnxruntime backend's forward takes no {', '.join(sorted(unsupported))}; "
                               "use the torch backend for training-time arguments")
        if decoder_input_ids is None:
            if labels is None:
                raise InputError("forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        keys, vals, mask = self.encode(pixel_values, input_ids, attention_mask, patch_mask, has_image)
        past = self.empty_cache(keys.shape[1])
        logits, _, _ = self.step(decoder_input_ids.cpu().numpy(), past, past, keys, vals, mask)
        return Seq2SeqLMOutput(logits=torch.from_numpy(logits))

    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, patch_mask=None, has_image=None, *,
                 logits_processor=(), eos_token_id: int, pad_token_id: int, decoder_start_token_id: int,
                 return_dict_in_generate: bool = True, output_scores: bool = False, output_logits: bool = False,
                 **options):
        """Greedy decoding or sampling with ``generate``'s options (temperature, top_k, top_p,
        min_new_tokens, repetition_penalty, no_repeat_ngram_size), its processors in its order:
        its own, then the caller's, then the sampling warpers. Beam search is refused."""
        if int(options.get("num_beams") or 1) > 1:
            raise BackendError("beam search (num_beams > 1) runs through transformers' generate, which the onnxruntime "
                               "backend does not run; load the model with backend='torch' for beam search, or decode "
                               "with num_beams=1 (greedy) or do_sample=True")
        unknown = sorted(set(options) - GENERATE_OPTIONS)
        if unknown:
            raise BackendError(f"the onnxruntime backend does not run the generate option(s) {', '.join(unknown)} "
                               f"(it runs {', '.join(sorted(GENERATE_OPTIONS))}); load the model with backend='torch'")
        gen = copy.deepcopy(self.generation_config)
        gen.update(**{k: v for k, v in options.items() if v is not None and k != "length_penalty"})
        processors = []
        if gen.repetition_penalty is not None and gen.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(gen.repetition_penalty))
        if gen.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(gen.no_repeat_ngram_size))
        if gen.min_new_tokens:
            processors.append(MinNewTokensLengthLogitsProcessor(1, gen.min_new_tokens, eos_token_id))
        processors += list(logits_processor)
        if gen.do_sample:
            if gen.temperature is not None and gen.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(gen.temperature))
            if gen.top_k:
                processors.append(TopKLogitsWarper(gen.top_k))
            if gen.top_p is not None and gen.top_p < 1.0:
                processors.append(TopPLogitsWarper(gen.top_p))
        max_new = gen.max_new_tokens or max(1, (gen.max_length or 20) - 1)
        steps = self.decode_steps(max_new, pixel_values=pixel_values, input_ids=input_ids,
                                  attention_mask=attention_mask, patch_mask=patch_mask, has_image=has_image)
        return decode(steps, max_new_tokens=max_new, logits_processor=processors, eos_token_id=eos_token_id,
                      pad_token_id=pad_token_id, decoder_start_token_id=decoder_start_token_id,
                      want_scores=bool(output_scores or output_logits), keep_scores=True, do_sample=bool(gen.do_sample))


class _Steps:
    """Next-token logits step by step: the decoder graph fed the last ids and its own present keys/values."""

    def __init__(self, model: OnnxModel, cross_keys, cross_values, encoder_mask):
        self.model, self.cross = model, (cross_keys, cross_values, encoder_mask)
        self.batch, self.device = cross_keys.shape[1], torch.device("cpu")
        self.keys = self.values = model.empty_cache(self.batch)

    def __call__(self, last_ids: torch.Tensor) -> torch.Tensor:
        logits, self.keys, self.values = self.model.step(last_ids.cpu().numpy(), self.keys, self.values, *self.cross)
        return torch.from_numpy(logits[:, -1])

"""The unified encoder-decoder: shapes, loss, causality, caching, generation, save/load, vocab checks."""
from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from unio.errors import InputError, VocabMismatchError
from unio.model import UnioConfig, UnioForConditionalGeneration, check_vocab
from unio.tokenizers.text import TextTokenizer
from unio.vocab import UnifiedVocab

S, P = 32, 8  # image side and patch size: a 4 x 4 patch grid


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    words = ["red", "green", "blue", "circle", "square", "triangle", "small", "large", "left", "right"]
    texts = [f"a {a} {b} {c} on the {d}" for a in words[6:8] for b in words[:3] for c in words[3:6]
             for d in words[8:]] * 4
    tok = TextTokenizer.train(texts, 300, tmp_path_factory.mktemp("tok") / "text.model")
    return UnifiedVocab(tok, num_bins=100, codebook_size=64)


def tiny_config(vocab, **overrides):
    values = dict(d_model=64, num_heads=2, encoder_layers=2, decoder_layers=2, image_size=S, patch_size=P)
    values.update(overrides)
    return UnioConfig.preset("tiny", vocab=vocab, **values)


def make_model(vocab, seed=0, **overrides):
    torch.manual_seed(seed)
    # A wide init makes an untrained model's greedy choices depend on its inputs (the default init
    # mostly repeats the start token), which the generation tests need.
    return UnioForConditionalGeneration(tiny_config(vocab, initializer_range=0.3, **overrides)).eval()


def batch(vocab, B=3, L=5, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = vocab.text_range[0] + 4, vocab.image_range[1]
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, L - 2:] = 0
    ids = torch.randint(lo, hi, (B, L), generator=g).masked_fill(mask == 0, vocab.pad_id)
    return {"pixel_values": torch.rand(B, 3, S, S, generator=g) * 2 - 1, "input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(lo, hi, (B, T), generator=g)}


def test_config_records_vocab(vocab):
    cfg = tiny_config(vocab)
    assert (cfg.vocab_size, cfg.used_vocab_size) == (vocab.size, vocab.used_size)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (vocab.pad_id, vocab.eos_id,
                                                                                vocab.bos_id)
    assert cfg.vocab_fingerprint == vocab.fingerprint and cfg.vocab_layout == vocab.to_dict()
    check_vocab(cfg, vocab)


def test_presets_and_bad_config(vocab):
    assert UnioConfig.preset("small", vocab=vocab).d_model == 512
    assert UnioConfig.preset("large", vocab=vocab).encoder_layers == 24
    with pytest.raises(InputError, match="unknown model preset 'huge'.*tiny"):
        UnioConfig.preset("huge", vocab=vocab)
    with pytest.raises(InputError, match=r"unknown UnioConfig field\(s\) \['d_modle'\]"):
        UnioConfig.preset("tiny", vocab=vocab, d_modle=3)
    with pytest.raises(InputError, match="image_size=60 must be a multiple of patch_size=8"):
        UnioConfig.preset("tiny", vocab=vocab, image_size=60)
    with pytest.raises(InputError, match="needs vocab="):
        UnioConfig.preset("tiny")


def test_forward_backward_shapes_and_loss(vocab):
    model = make_model(vocab).train()
    b = batch(vocab)
    out = model(**b)
    assert out.logits.shape == (3, 7, vocab.size)
    assert out.encoder_last_hidden_state.shape == (3, (S // P) ** 2 + 5, 64)
    assert torch.isinf(out.logits[..., vocab.used_size:]).all() and torch.isfinite(out.logits[..., :vocab.used_size]).all()
    manual = torch.nn.functional.cross_entropy(out.logits.reshape(-1, vocab.size), b["labels"].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n != "encoder.mask_embed"}  # no patch_mask here
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if g is None]
    assert grads["shared.weight"][vocab.used_size:].abs().max() == 0  # padding ids are never trained


def test_ignore_index_and_label_weights(vocab):
    model = make_model(vocab)
    b = batch(vocab)
    labels = b["labels"].clone()
    labels[:, -2:] = -100
    base = model(**{**b, "labels": labels})
    ce = torch.nn.functional.cross_entropy(base.logits.reshape(-1, vocab.size), labels.reshape(-1),
                                           reduction="none").view(labels.shape)
    keep = labels != -100
    torch.testing.assert_close(base.loss, ce[keep].mean())
    ones = model(**{**b, "labels": labels}, label_weights=torch.ones(labels.shape))
    torch.testing.assert_close(ones.loss, base.loss)
    w = torch.rand(labels.shape) + 0.1
    weighted = model(**{**b, "labels": labels}, label_weights=w)
    torch.testing.assert_close(weighted.loss, (ce * w)[keep].sum() / w[keep].sum())
    only_first = torch.zeros(labels.shape)
    only_first[:, 0] = 1.0  # zero weight switches a token off
    torch.testing.assert_close(model(**{**b, "labels": labels}, label_weights=only_first).loss, ce[:, 0].mean())
    with pytest.raises(InputError, match="label_weights \\(3, 2\\) must match labels \\(3, 7\\)"):
        model(**b, label_weights=torch.ones(3, 2))
    padding_id = torch.full_like(labels, vocab.used_size)  # a padding id of the vocabulary is never a target
    with pytest.raises(InputError, match=f"labels must be -100 \\(ignored\\) or global ids in \\[0, {vocab.used_size}\\)"):
        model(**{**b, "labels": padding_id})


def test_logits_mask_equals_the_full_pass(vocab):
    """Logits, loss and every gradient under ``logits_mask`` (length-grouped decoding) equal those of
    the plain padded pass, for any number of groups."""
    from unio.model.grouping import length_groups

    b = batch(vocab, B=6, T=40, seed=3)
    labels = b["labels"].clone()
    for i, n in enumerate([3, 5, 40, 12, 0, 38]):  # one sample with no target at all
        labels[i, n:] = -100
    w = torch.rand(labels.shape)
    keep = labels != -100
    model = make_model(vocab).train()
    full = model(**{**b, "labels": labels}, label_weights=w)
    full.loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(want) > 20
    for groups in (3, 2, 1):
        model.zero_grad()
        model.max_length_groups = groups
        out = model(**{**b, "labels": labels}, label_weights=w, logits_mask=keep)
        assert out.logits.shape == (int(keep.sum()), vocab.size)
        torch.testing.assert_close(out.logits, full.logits[keep], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=1e-6)
        out.loss.backward()
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert got.keys() == want.keys()
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    with pytest.raises(InputError, match="logits_mask and output_hidden_states cannot be combined"):
        model(**{**b, "labels": labels}, logits_mask=keep, output_hidden_states=True)

    # the grouping: padded tokens saved, every sample with a target in exactly one group, long enough
    lengths = [3, 3, 4, 20, 65, 65, 0, 12]
    groups = length_groups(lengths)
    assert sorted(i for idx, _ in groups for i in idx) == [0, 1, 2, 3, 4, 5, 7]
    assert all(lengths[i] <= n for idx, n in groups for i in idx)
    assert sum(len(idx) * n for idx, n in groups) < 7 * 65 / 2
    assert length_groups([5] * 10) == [(list(range(10)), 5)]  # nothing to gain: one group
    assert length_groups([0, 0]) == [] and len(length_groups(list(range(1, 100)), max_groups=2)) == 2


def test_decoder_is_causal(vocab):
    model = make_model(vocab)
    b = batch(vocab)
    dec = torch.randint(vocab.text_range[0] + 4, vocab.used_size, (3, 9))
    changed = dec.clone()
    changed[:, 6:] = vocab.eos_id
    kw = dict(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    a = model(**kw, decoder_input_ids=dec).logits
    c = model(**kw, decoder_input_ids=changed).logits
    torch.testing.assert_close(a[:, :6], c[:, :6], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 6:], c[:, 6:])


def test_generate_with_cache_equals_without(vocab):
    model = make_model(vocab)
    b = batch(vocab)
    kw = dict(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              max_new_tokens=12, do_sample=False)
    cached = model.generate(**kw, use_cache=True)
    uncached = model.generate(**kw, use_cache=False)
    assert cached.shape == (3, 13) and (cached[:, 0] == vocab.bos_id).all()
    assert torch.equal(cached, uncached)
    assert len(set(cached[:, 1:].flatten().tolist())) > 3  # not a degenerate constant sequence
    beams = model.generate(**kw, num_beams=3, use_cache=True)
    assert torch.equal(beams, model.generate(**kw, num_beams=3, use_cache=False))


def test_padding_and_imageless_samples_do_not_leak(vocab):
    """A padded prompt, or a batch-mate without an image, gives the same tokens as the sample alone."""
    model = make_model(vocab)
    b = batch(vocab)
    has_image = torch.tensor([True, False, True])
    full = model.generate(pixel_values=b["pixel_values"], input_ids=b["input_ids"],
                          attention_mask=b["attention_mask"], has_image=has_image, max_new_tokens=8)
    alone0 = model.generate(pixel_values=b["pixel_values"][:1], input_ids=b["input_ids"][:1, :3], max_new_tokens=8)
    no_image = model.generate(input_ids=b["input_ids"][1:2], max_new_tokens=8)  # text only (text-to-image)
    assert torch.equal(full[0], alone0[0]) and torch.equal(full[1], no_image[0])
    image_only = model.generate(pixel_values=b["pixel_values"], max_new_tokens=4)  # no prompt at all
    assert image_only.shape == (3, 5)


def test_beam_search_logits_processor_and_prefix_fn(vocab):
    model = make_model(vocab)
    b = batch(vocab)
    lo, hi = vocab.location_range
    allowed = vocab.allowed_mask("location")

    class OnlyLocations(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    kw = dict(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              max_new_tokens=6, min_new_tokens=6)
    out = model.generate(**kw, num_beams=4, num_return_sequences=2, logits_processor=LogitsProcessorList([OnlyLocations()]))
    assert out.shape == (6, 7) and ((out[:, 1:] >= lo) & (out[:, 1:] < hi)).all()
    img_lo, img_hi = vocab.image_range
    out = model.generate(**kw, prefix_allowed_tokens_fn=lambda i, ids: list(range(img_lo, img_hi)))
    assert ((out[:, 1:] >= img_lo) & (out[:, 1:] < img_hi)).all()
    sampled = model.generate(**kw, do_sample=True, top_k=20, temperature=0.7)
    assert sampled.shape == (3, 7) and (sampled[:, 1:] < vocab.used_size).all()


def test_masked_patches_and_image_errors(vocab):
    model = make_model(vocab)
    b = batch(vocab)
    G = S // P
    mask = torch.zeros(3, G, G, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    masked = model.encoder(b["pixel_values"], patch_mask=mask, **kw).last_hidden_state
    assert masked.shape == (3, G * G + 5, 64) and torch.isfinite(masked).all()
    # what lies under the mask does not matter; what is outside it does
    scribbled = b["pixel_values"].clone()
    scribbled[:, :, P:3 * P, P:3 * P] = 1.0
    torch.testing.assert_close(model.encoder(scribbled, patch_mask=mask.view(3, -1), **kw).last_hidden_state, masked)
    assert not torch.allclose(model.encoder(scribbled, **kw).last_hidden_state,
                              model.encoder(b["pixel_values"], **kw).last_hidden_state)
    model(pixel_values=b["pixel_values"], patch_mask=mask, labels=b["labels"], **kw).loss.backward()
    with pytest.raises(InputError, match=r"patch_mask must be bool \(B, 4, 4\)"):
        model.encoder(b["pixel_values"], patch_mask=torch.zeros(3, 5, dtype=torch.bool), **kw)
    with pytest.raises(InputError, match=r"pixel_values must be \(B, 3, 32, 32\).*letterbox"):
        model(pixel_values=torch.zeros(3, 3, 30, 30), **kw, labels=b["labels"])
    with pytest.raises(InputError, match="neither an image.*nor any prompt"):
        model.encoder(b["pixel_values"], has_image=torch.tensor([False, True, True]),
                      input_ids=b["input_ids"], attention_mask=torch.zeros_like(b["attention_mask"]))
    with pytest.raises(InputError, match="-100"):
        model.encoder(input_ids=torch.full((1, 3), -100))
    with pytest.raises(InputError, match="needs pixel_values, input_ids, or both"):
        model.encoder()


def test_save_load_identical_and_vocab_check(vocab, tmp_path):
    model = make_model(vocab)
    b = batch(vocab)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = UnioForConditionalGeneration.from_pretrained(tmp_path, vocab=vocab).eval()
    assert loaded.shared.weight is loaded.encoder.embed_tokens.weight is loaded.decoder.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, model(**b).logits, rtol=0, atol=0)

    tok = TextTokenizer.train([f"another corpus line {i} with words" for i in range(200)], 300, tmp_path / "o.model")
    other = UnifiedVocab(tok, num_bins=100, codebook_size=64)
    with pytest.raises(VocabMismatchError, match="text tokenizer \\(SentencePiece model\\)"):
        UnioForConditionalGeneration.from_pretrained(tmp_path, vocab=other)
    fewer_bins = UnifiedVocab(tok, num_bins=50, codebook_size=64)
    with pytest.raises(VocabMismatchError, match="number of location bins: 100 here vs 50"):
        check_vocab(model.config, fewer_bins)
    bare = UnioConfig.preset("tiny", vocab_size=512)
    with pytest.raises(VocabMismatchError, match="records no vocabulary layout"):
        check_vocab(bare, vocab)


def test_gradient_checkpointing_matches(vocab):
    b = batch(vocab)
    grads = []
    for checkpointing in (False, True):
        model = make_model(vocab).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(**b).loss
        loss.backward()
        grads.append(model.shared.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_estimate_flops(vocab):
    model = make_model(vocab)
    fwd = model.estimate_flops(src_len=21, tgt_len=7, batch_size=2, backward=False)
    assert model.estimate_flops(21, 7, 2) == 3 * fwd
    # the matmul weights alone: 2 FLOPs per weight per token they touch is a lower bound
    assert fwd > 2 * 2 * 7 * model.shared.weight.numel()
    assert model.estimate_flops_per_token(21, 7) == pytest.approx(model.estimate_flops(21, 7) / 7)


def test_tiny_model_overfits_one_batch(vocab):
    torch.manual_seed(0)
    model = UnioForConditionalGeneration(tiny_config(vocab)).train()
    b = batch(vocab, B=4, T=8, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(300):
        loss = model(**b).loss
        if loss.item() < 0.05:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after {step} steps"
    model.eval()
    out = model.generate(**{k: v for k, v in b.items() if k != "labels"}, max_new_tokens=8)
    assert torch.equal(out[:, 1:], b["labels"])


def test_rms_norm_backward_matches_autograd():
    from unio.model.modeling_unio import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm((2, 1, 8))  # queries' and keys' weights, applied to a (B, T, 2, H, D) slice
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 3, 2, 8)[:, :, :2].requires_grad_()  # a non-contiguous view, as in attention
    out = norm(x)
    reference = torch.nn.functional.rms_norm(x, (8,), eps=norm.eps) * norm.weight
    torch.testing.assert_close(out, reference)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, norm.weight), g)
    want = torch.autograd.grad(reference, (x, norm.weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)

"""Several images per example: the image-index embedding, collate of pairs and clips, K = 1 unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unio.data.collate import collate
from unio.errors import InputError
from unio.model import UnioForConditionalGeneration
from unio.tasks.base import Example

from test_model import S, batch, make_model, vocab  # noqa: F401  (the module-scoped vocab fixture)


def _copy_weights(src, dst):
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert unexpected == [] and all("image_index_embed" in k for k in missing)


def test_one_image_model_reads_the_same_with_max_images(vocab):
    """A single-image model's weights in a max_images > 1 network (index embeddings zero at init) give
    the same logits, for (B, 3, S, S) and for (B, 1, 3, S, S)."""
    one = make_model(vocab)
    many = UnioForConditionalGeneration(one.config.__class__(**{**one.config.to_dict(), "max_images": 4})).eval()
    _copy_weights(one, many)
    index = many.get_encoder().image_index_embed
    assert torch.count_nonzero(index[0]) == 0 and torch.count_nonzero(index[1:]) > 0  # frames told apart
    b = batch(vocab)
    with torch.no_grad():
        ref = one(**b).logits
        assert torch.equal(many(**b).logits, ref)
        five = {**b, "pixel_values": b["pixel_values"][:, None]}
        assert torch.equal(many(**five).logits, ref)
        assert torch.equal(one(**five).logits, ref)  # K = 1 works without the embedding too


def test_image_index_changes_what_a_pair_means(vocab):
    many = make_model(vocab, max_images=4)
    with torch.no_grad():
        many.get_encoder().image_index_embed.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    b = batch(vocab)
    g = torch.Generator().manual_seed(3)
    a, c = torch.rand(3, 3, S, S, generator=g) * 2 - 1, torch.rand(3, 3, S, S, generator=g) * 2 - 1
    with torch.no_grad():
        ab = many(**{**b, "pixel_values": torch.stack([a, c], 1)}).logits
        ba = many(**{**b, "pixel_values": torch.stack([c, a], 1)}).logits
        assert not torch.allclose(ab, ba)  # which image comes first matters
        # a missing second image (has_image False) is ignored: equals the one-image example
        padded = many(**{**b, "pixel_values": torch.stack([a, c], 1),
                         "has_image": torch.tensor([[True, False]] * 3)}).logits
        alone = many(**{**b, "pixel_values": a[:, None]}).logits
        assert torch.allclose(padded, alone, atol=1e-5)


def test_too_many_images_and_bad_has_image(vocab):
    one = make_model(vocab)
    b = batch(vocab)
    pair = {**b, "pixel_values": torch.zeros(3, 2, 3, S, S)}
    with pytest.raises(InputError, match="max_images=1"):
        one(**pair)
    many = make_model(vocab, max_images=2)
    with pytest.raises(InputError, match="at most max_images=2"):
        many(**{**b, "pixel_values": torch.zeros(3, 3, 3, S, S)})
    with pytest.raises(InputError, match="has_image"):
        many(**{**pair, "has_image": torch.ones(3, dtype=torch.bool)})


def _example(images, ids=(5, 6, 2)):
    images = [Image.fromarray(np.full((S, S, 3), v, np.uint8)) for v in images]
    return Example("t", "p", list(ids), images[0] if images else None, None, [7, 2], None, None, {},
                   images=images if len(images) > 1 else None)


def test_collate_pairs_and_clips(vocab):
    out = collate([_example([10, 20]), _example([30]), _example([40, 50, 60])], vocab)
    assert out["pixel_values"].shape == (3, 3, 3, S, S)
    assert out["has_image"].tolist() == [[True, True, False], [True, False, False], [True, True, True]]
    assert torch.allclose(out["pixel_values"][2, 2], torch.full((3, S, S), 60 / 127.5 - 1))
    assert torch.count_nonzero(out["pixel_values"][1, 1:]) == 0
    single = collate([_example([10]), _example([30])], vocab)
    assert single["pixel_values"].shape == (2, 3, S, S) and single["has_image"].shape == (2,)
    full = collate([_example([10, 20])], vocab, image_size=S, patch_size=8)
    assert full["patch_mask"].shape == (1, 2, 4, 4) and not full["patch_mask"].any()
    model = make_model(vocab, max_images=3)
    with torch.no_grad():
        loss = model(**{k: v for k, v in out.items() if k != "label_weights"}).loss
    assert torch.isfinite(loss)


def test_all_images_of_an_example():
    ex = _example([1, 2])
    assert len(ex.all_images) == 2 and ex.image is ex.all_images[0]
    one = _example([1])
    assert one.images is None and one.all_images == [one.image]


def test_mixed_image_counts_encode_each_example_as_alone(vocab):
    """A batch of a 3-frame clip, a pair and a single picture: each row's encoder states and the
    model's logits equal those of the example encoded alone (no padding images in its sequence)."""
    model = make_model(vocab, max_images=3)
    with torch.no_grad():
        model.get_encoder().image_index_embed.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    b = batch(vocab)
    g = torch.Generator().manual_seed(5)
    pv = torch.rand(3, 3, 3, S, S, generator=g) * 2 - 1
    has = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    pv = pv * has[..., None, None, None]
    enc = model.get_encoder()
    with torch.no_grad():
        together = enc(pv, b["input_ids"], b["attention_mask"], None, has)
        logits = model(**{**b, "pixel_values": pv, "has_image": has}).logits
        for r, k in enumerate((3, 2, 1)):
            alone = enc(pv[r:r + 1, :k], b["input_ids"][r:r + 1], b["attention_mask"][r:r + 1], None, has[r:r + 1, :k])
            n = alone.last_hidden_state.shape[1]
            real = alone.attention_mask[0] if alone.attention_mask is not None else torch.ones(n, dtype=torch.bool)
            assert torch.allclose(together.last_hidden_state[r, :n][real], alone.last_hidden_state[0][real], atol=1e-5)
            assert not together.attention_mask[r, n:].any()
            row = {name: value[r:r + 1] for name, value in b.items()}
            one = model(**{**row, "pixel_values": pv[r:r + 1, :k], "has_image": has[r:r + 1, :k]}).logits
            assert torch.allclose(logits[r:r + 1], one, atol=1e-4)
    assert together.last_hidden_state.shape[1] < 3 * 16 + b["input_ids"].shape[1] + 1

"""UnifiedVocab: id layout, local <-> global ids, split/join, constraints, fingerprint, JSON."""
import json

import numpy as np
import pytest
import sentencepiece as spm
import torch

from unio.errors import TokenizerError, VocabMismatchError
from unio.tokenizers import LocationTokenizer, TextTokenizer
from unio.vocab import Span, UnifiedVocab

CORPUS = [f"a {c} {s} is {r} the {c2} {s2}" for c in ("red", "green", "blue") for s in ("circle", "square")
          for r in ("left of", "above") for c2 in ("purple", "orange") for s2 in ("star", "hexagon")]


class FakeImageTokenizer:
    """What UnifiedVocab reads from an image tokenizer: its codebook size and fingerprint."""

    def __init__(self, codebook_size=512, fingerprint="vq-a"):
        self.codebook_size, self.fingerprint = codebook_size, fingerprint


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    a = TextTokenizer.train(CORPUS, 300, root / "a.model")
    b = TextTokenizer.train(CORPUS[::-1] + ["another sentence"], 320, root / "b.model")
    assert a.sha256 != b.sha256
    return a, b


@pytest.fixture
def vocab(texts):
    return UnifiedVocab(texts[0], num_bins=1000, codebook_size=512)


def test_ranges_are_disjoint_ordered_and_padded(texts, vocab):
    T = texts[0].vocab_size
    assert vocab.text_range == (0, T)
    assert vocab.location_range == (T, T + 1000)
    assert vocab.image_range == (T + 1000, T + 1000 + 512)
    assert vocab.used_size == T + 1512 <= vocab.size < vocab.used_size + 64
    assert vocab.size % 64 == 0 and len(vocab) == vocab.size
    assert (vocab.pad_id, vocab.eos_id, vocab.bos_id) == (texts[0].pad_id, texts[0].eos_id, texts[0].bos_id)
    for pad_multiple in (1, 8, 128):
        v = UnifiedVocab(texts[0], 7, 5, pad_multiple=pad_multiple)
        assert v.size % pad_multiple == 0 and v.used_size <= v.size < v.used_size + pad_multiple


def test_to_global_and_back_keeps_the_container_type(vocab):
    T = vocab.text_range[1]
    assert vocab.to_global(0, "location") == T
    assert vocab.to_global([0, 999], "location") == [T, T + 999]
    arr = vocab.to_global(np.array([[1, 2]]), "image")
    assert isinstance(arr, np.ndarray) and arr.tolist() == [[T + 1001, T + 1002]]
    ten = vocab.to_global(torch.tensor([3, 4]), "text")
    assert isinstance(ten, torch.Tensor) and ten.dtype == torch.long and ten.tolist() == [3, 4]
    assert vocab.to_local(vocab.to_global([5, 6], "image"), "image") == [5, 6]
    assert vocab.location_ids([1, 2]) == vocab.to_global([1, 2], "location")
    assert vocab.image_ids(torch.tensor([0])).item() == vocab.image_range[0]
    assert vocab.to_global([], "image") == []


def test_location_tokenizer_bins_fit_the_location_range(vocab):
    bins = LocationTokenizer(vocab.num_bins).encode_boxes([[0, 0, 640, 480], [1, 2, 3, 4]], (640, 480))
    ids = vocab.location_ids(bins)
    assert ((ids >= vocab.location_range[0]) & (ids < vocab.location_range[1])).all()


def test_out_of_range_ids_are_refused(vocab):
    with pytest.raises(TokenizerError, match=r"location ids must lie in \[0, 1000\)"):
        vocab.to_global([1000], "location")
    with pytest.raises(TokenizerError, match="must lie in"):
        vocab.to_global(-1, "text")
    with pytest.raises(TokenizerError, match="not all image ids.*use split"):
        vocab.to_local([vocab.location_range[0]], "image")
    with pytest.raises(TokenizerError, match="unknown modality 'audio'"):
        vocab.to_global([0], "audio")


def test_split_cuts_typed_runs_and_join_inverts_it(texts, vocab):
    text_ids = texts[0].encode("a red circle")
    seq = ([vocab.bos_id] + text_ids + vocab.location_ids([10, 20, 30, 40]) + texts[0].encode("blue")
           + vocab.image_ids([7, 8]) + [vocab.pad_id] + vocab.image_ids([9]) + [vocab.eos_id] + text_ids)
    spans = vocab.split(seq)
    assert spans == [Span("text", text_ids), Span("location", [10, 20, 30, 40]),
                     Span("text", texts[0].encode("blue")), Span("image", [7, 8, 9])]
    assert texts[0].decode(spans[0].ids) == "a red circle"
    body = [i for i in seq[: seq.index(vocab.eos_id)] if i not in (vocab.bos_id, vocab.pad_id)]
    assert vocab.join(spans) == body
    assert vocab.join(spans, add_eos=True) == body + [vocab.eos_id]
    assert vocab.join([("location", np.array([1, 2]))]) == vocab.location_ids([1, 2])
    # without stopping at eos the tail is kept (and merged with the run before it)
    assert vocab.split(seq, stop_at_eos=False)[-1] == Span("text", text_ids)
    assert vocab.split(torch.tensor(seq)) == spans


def test_split_never_raises_on_garbage(vocab):
    padded = vocab.size - 1  # a padding id past the image codes (size > used_size here)
    assert padded >= vocab.used_size
    spans = vocab.split([padded, -5, vocab.location_range[0]])
    assert spans == [Span("invalid", [padded, -5]), Span("location", [0])]
    assert vocab.split([]) == []
    assert vocab.kinds([0, vocab.location_range[0], vocab.image_range[0], padded]).tolist() == [0, 1, 2, -1]
    assert [vocab.modality(i) for i in (0, vocab.image_range[1] - 1, padded)] == ["text", "image", "invalid"]


def test_allowed_mask(vocab):
    loc = vocab.allowed_mask("location")
    assert loc.dtype == torch.bool and loc.shape == (vocab.size,)
    expected = torch.zeros(vocab.size, dtype=torch.bool)
    expected[vocab.location_range[0]:vocab.location_range[1]] = True
    expected[vocab.eos_id] = True
    assert torch.equal(loc, expected)
    assert not vocab.allowed_mask("location", eos=False)[vocab.eos_id]

    text = vocab.allowed_mask("text")
    assert text[vocab.eos_id] and text[5]
    assert not text[vocab.pad_id] and not text[vocab.bos_id] and not text[vocab.unk_id]
    assert not text[vocab.location_range[0]:].any()

    everything = vocab.allowed_mask("text", "location", "image")
    assert everything[vocab.image_range[0]:vocab.image_range[1]].all()
    assert not everything[vocab.used_size:].any()  # padded ids are never generated
    assert int(everything.sum()) == vocab.used_size - 3  # all but pad, bos, unk
    with pytest.raises(TokenizerError, match="unknown modality"):
        vocab.allowed_mask("pixels")


def test_foreign_sentencepiece_model_in_the_vocab(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=30, minloglevel=2)
    tok = TextTokenizer.load(tmp_path / "m.model")  # unk 0 (= pad), bos 1, eos 2
    vocab = UnifiedVocab(tok, num_bins=100, codebook_size=16)
    assert vocab.text_range == (0, 30) and vocab.size == 192
    mask = vocab.allowed_mask("text")
    assert mask[2] and not mask[0] and not mask[1]
    assert vocab.split([1] + tok.encode("a red star") + [2, 5]) == [Span("text", tok.encode("a red star"))]


def test_fingerprint_changes_with_every_tokenizer_change(texts):
    a, b = texts
    base = UnifiedVocab(a, 1000, image_tokenizer=FakeImageTokenizer(512, "vq-a"))
    same = UnifiedVocab(TextTokenizer(a.model_proto), 1000, image_tokenizer=FakeImageTokenizer(512, "vq-a"))
    assert base.fingerprint == same.fingerprint and base == same and len(base.fingerprint) == 64
    others = [
        UnifiedVocab(b, 1000, image_tokenizer=FakeImageTokenizer(512, "vq-a")),    # other SentencePiece model
        UnifiedVocab(a, 999, image_tokenizer=FakeImageTokenizer(512, "vq-a")),     # other num_bins
        UnifiedVocab(a, 1000, image_tokenizer=FakeImageTokenizer(1024, "vq-a")),   # other codebook size
        UnifiedVocab(a, 1000, image_tokenizer=FakeImageTokenizer(512, "vq-b")),    # other VQ weights
        UnifiedVocab(a, 1000, 512),                                                # no image tokenizer
    ]
    prints = {base.fingerprint} | {v.fingerprint for v in others}
    assert len(prints) == 1 + len(others)


def test_json_round_trip(tmp_path, texts):
    a = texts[0]
    vocab = UnifiedVocab(a, 1000, image_tokenizer=FakeImageTokenizer())
    data = json.loads(vocab.to_json())
    assert data["fingerprint"] == vocab.fingerprint and data["size"] == vocab.size
    assert data["ranges"]["location"] == list(vocab.location_range)
    bare = UnifiedVocab.from_dict(data)  # layout only, no tokenizers
    assert bare == vocab and bare.image_range == vocab.image_range and bare.eos_id == vocab.eos_id
    full = UnifiedVocab.from_dict(data, a, FakeImageTokenizer())
    assert full == vocab
    vocab.save(tmp_path / "vocab.json")
    assert UnifiedVocab.load(tmp_path / "vocab.json", a, FakeImageTokenizer()) == vocab


def test_mismatched_tokenizers_are_refused(texts):
    a, b = texts
    data = UnifiedVocab(a, 1000, image_tokenizer=FakeImageTokenizer(512, "vq-a")).to_dict()
    with pytest.raises(VocabMismatchError) as info:
        UnifiedVocab.from_dict(data, b, FakeImageTokenizer(512, "vq-a"))
    message = str(info.value)
    assert "text tokenizer (SentencePiece model)" in message
    assert "Load the model with the tokenizers it was trained with" in message
    assert "image tokenizer" not in message  # names only what differs
    with pytest.raises(VocabMismatchError, match="image tokenizer .VQ config \\+ weights.: 'vq-a' here vs 'vq-b'"):
        UnifiedVocab.from_dict(data, a, FakeImageTokenizer(512, "vq-b"))
    with pytest.raises(VocabMismatchError, match="codebook size: 512 here vs 256"):
        UnifiedVocab.from_dict(data, a, FakeImageTokenizer(256, "vq-a"))
    with pytest.raises(VocabMismatchError, match="image tokenizer"):
        UnifiedVocab.from_dict(data, a)  # the image tokenizer it was made with is missing
    other_bins = UnifiedVocab(a, 500, image_tokenizer=FakeImageTokenizer(512, "vq-a"))
    with pytest.raises(VocabMismatchError, match="number of location bins: 1000 here vs 500"):
        UnifiedVocab.from_dict(data).check(other_bins)


def test_corrupt_descriptions_are_refused(texts):
    data = UnifiedVocab(texts[0], 1000, 512).to_dict()
    with pytest.raises(VocabMismatchError, match="fingerprint does not match"):
        UnifiedVocab.from_dict({**data, "num_bins": 10})
    del data["num_bins"]
    with pytest.raises(VocabMismatchError, match="missing 'num_bins'.*UnifiedVocab.to_dict"):
        UnifiedVocab.from_dict(data)


def test_bad_constructor_arguments(texts):
    a = texts[0]
    with pytest.raises(TokenizerError, match="needs a text tokenizer"):
        UnifiedVocab(None, 1000, 512)
    with pytest.raises(TokenizerError, match="needs codebook_size or an image_tokenizer"):
        UnifiedVocab(a, 1000)
    with pytest.raises(VocabMismatchError, match="pass only the image tokenizer"):
        UnifiedVocab(a, 1000, 256, image_tokenizer=FakeImageTokenizer(512))
    with pytest.raises(TokenizerError, match="num_bins must be >= 2"):
        UnifiedVocab(a, 1, 512)

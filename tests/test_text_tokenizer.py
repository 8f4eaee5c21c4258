"""TextTokenizer: SentencePiece training, loading foreign models, exact round trips, batching."""
import io

import pytest
import sentencepiece as spm
import torch

from unio.errors import TokenizerError
from unio.tokenizers import TextTokenizer

CORPUS = [f"a {size} {color} {shape} is {rel} the {color2} {shape2}."
          for size in ("small", "large") for color in ("red", "green", "blue", "yellow")
          for shape in ("circle", "square", "triangle") for rel in ("left of", "above", "below")
          for color2, shape2 in (("purple", "star"), ("orange", "hexagon"))]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return TextTokenizer.train(CORPUS, vocab_size=350, path=tmp_path_factory.mktemp("tok") / "text.model")


ROUND_TRIP = [
    "",
    "a red circle",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 🇫🇷",
    "漢字かなカナ 한국어 中文句子。",
    "multiple     spaces   between",
    "  leading and trailing  ",
    " ",
    "tabs\tand\nnewlines\r\nand a final newline\n",
    "\n\n",
    "Ünïcödé é (NFC) vs e\u0301 (NFD) stay as given",
    "zero\u200bwidth and \x00 NUL",
    "digits 1234567890 and symbols <>{}[]|\\^~`",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_any_text_round_trips_exactly(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_ids_and_eos(tok):
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
    ids = tok.encode("a red circle", add_eos=True)
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "a red circle"
    assert tok.special_ids == [0, 1, 2, 3]
    # 256 byte pieces + 4 specials + learned pieces; a small corpus may give fewer than asked for
    assert 260 < tok.vocab_size <= 350


def test_train_from_files_and_single_file(tmp_path):
    part1, part2 = tmp_path / "a.txt", tmp_path / "b.corpus"
    part1.write_text("\n".join(CORPUS[:80]) + "\n", encoding="utf-8")
    part2.write_text("\n".join(CORPUS[80:]), encoding="utf-8")
    from_files = TextTokenizer.train([part1, str(part2)], 400, tmp_path / "f.model", model_type="bpe")
    from_one = TextTokenizer.train(str(part1), 400, tmp_path / "one.model", model_type="bpe")
    assert (tmp_path / "f.model").is_file() and from_one.path == tmp_path / "one.model"
    # the files were read, not trained on as text: corpus words became pieces, path parts did not
    for tok in (from_files, from_one):
        pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
        assert "▁triangle" in pieces and "corpus" not in pieces and "txt" not in pieces
    reloaded = TextTokenizer.load(tmp_path / "f.model")
    assert reloaded.sha256 == from_files.sha256 and reloaded.model_proto == from_files.model_proto
    assert TextTokenizer.load(tmp_path).vocab_size > 0  # a folder with .model files


def test_single_string_is_one_sentence_not_characters(tmp_path):
    tok = TextTokenizer.train("hello world " * 20, 300, tmp_path / "s.model", model_type="bpe")
    assert tok.encode("hello") == [tok.sp.PieceToId("▁hello")]


def test_user_defined_symbols_stay_whole(tmp_path):
    tok = TextTokenizer.train(CORPUS, 320, tmp_path / "u.model", user_defined_symbols=["<sep>"])
    ids = tok.encode("red<sep>blue")
    assert "<sep>" in [tok.id_to_piece(i) for i in ids]
    assert tok.decode(ids) == "red<sep>blue"


def _train_direct(tmp_path, name, **options):
    """A SentencePiece model made by the sentencepiece library itself, as other projects do."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / name), vocab_size=40,
                                   minloglevel=2, **options)
    return tmp_path / f"{name}.model"


def test_loads_sentencepiece_defaults_model(tmp_path):
    # sentencepiece defaults: unk 0, bos 1, eos 2, no pad (LLaMA's layout)
    tok = TextTokenizer.load(_train_direct(tmp_path, "llama_like"))
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.pad_id == tok.unk_id  # no pad piece: pad with unk, never a label
    assert tok.decode(tok.encode("a red circle is above the blue star.")) == "a red circle is above the blue star."
    batch = tok.encode_batch(["a red circle", "a"])
    assert (batch["input_ids"][1, batch["attention_mask"][1] == 0] == tok.pad_id).all()


def test_loads_t5_like_model_without_bos(tmp_path):
    path = _train_direct(tmp_path, "t5_like", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    tok = TextTokenizer.load(path)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 0)  # decoder starts with pad, as in T5
    assert tok.decode(tok.encode("a small green square", add_eos=True)) == "a small green square"


def test_model_from_bytes():
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=40, minloglevel=2)
    tok = TextTokenizer(buf.getvalue())
    assert tok.path is None and tok.decode(tok.encode("a blue star")) == "a blue star"


def test_model_without_eos_is_refused_when_eos_is_needed(tmp_path):
    tok = TextTokenizer.load(_train_direct(tmp_path, "no_eos", eos_id=-1))
    with pytest.raises(TokenizerError, match="no end-of-sequence"):
        tok.encode("a", add_eos=True)


def test_encode_batch_pads_right_with_mask(tok):
    texts = ["a red circle is above the blue star.", "a", ""]
    batch = tok.encode_batch(texts, add_eos=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
    lengths = [len(tok.encode(t, add_eos=True)) for t in texts]
    assert mask.sum(1).tolist() == lengths and ids.shape[1] == max(lengths)
    for row, n in enumerate(lengths):
        assert ids[row, :n].tolist() == tok.encode(texts[row], add_eos=True)
        assert (ids[row, n:] == tok.pad_id).all() and (mask[row, n:] == 0).all()
    assert tok.decode_batch(ids) == texts

    padded = tok.encode_batch(texts, pad_to_multiple_of=8)
    assert padded["input_ids"].shape[1] % 8 == 0
    cut = tok.encode_batch(texts, max_length=3)
    assert cut["input_ids"].shape[1] == 3 and cut["attention_mask"].sum(1).max() == 3
    assert tok.encode_batch([])["input_ids"].shape == (0, 0)


# --------------------------------------------------------------------------- bad input
def test_bad_training_inputs(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist; check the path"):
        TextTokenizer.train([tmp_path / "missing.txt"], 300, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="does not exist; check the path"):
        TextTokenizer.train(["/no/such/corpus.txt"], 300, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="is a directory; pass the text files"):
        TextTokenizer.train([str(tmp_path)], 300, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="no text to train"):
        TextTokenizer.train([], 300, tmp_path / "x.model")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TokenizerError, match="no text to train"):
        TextTokenizer.train([tmp_path / "empty.txt"], 300, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="at least 300"):
        TextTokenizer.train(CORPUS, 100, tmp_path / "x.model")
    with pytest.raises(TokenizerError, match="strings or text-file paths"):
        TextTokenizer.train([b"bytes"], 300, tmp_path / "x.model")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(TokenizerError, match="could not read training text file"):
        TextTokenizer.train([tmp_path / "latin1.txt"], 300, tmp_path / "x.model")


def test_bad_model_files(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist; train one"):
        TextTokenizer.load(tmp_path / "missing.model")
    with pytest.raises(TokenizerError, match="no SentencePiece .model file"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "garbage.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="could not read the SentencePiece model"):
        TextTokenizer.load(tmp_path / "garbage.model")


def test_bad_encode_decode_inputs(tok):
    with pytest.raises(TokenizerError, match="expected a str"):
        tok.encode(["a list"])
    with pytest.raises(TokenizerError, match="UnifiedVocab.split"):
        tok.decode([5, tok.vocab_size + 3])
    with pytest.raises(TokenizerError, match="UnifiedVocab.split"):
        tok.decode([-1])

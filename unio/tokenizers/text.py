"""Text pieces through SentencePiece (Kudo & Richardson, 2018).

unio trains its own models with byte fallback, identity normalisation and no whitespace
folding, so that *any* Unicode string survives encode -> decode unchanged. Any existing
SentencePiece ``.model`` (T5's, LLaMA's, one trained elsewhere) loads as well; such models
keep their own normalisation rules.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import sentencepiece as spm

from ..errors import TokenizerError

if TYPE_CHECKING:
    import torch

__all__ = ["TextTokenizer"]

# Special ids of models trained by unio (T5's convention: pad 0, eos 1, unk 2; plus bos 3).
PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3


class TextTokenizer:
    """A SentencePiece model with the few conveniences unio needs."""

    def __init__(self, model_proto: bytes, path: str | Path | None = None):
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self._proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError on garbage
            raise TokenizerError(
                f"could not read the SentencePiece model {path or '<bytes>'}: {exc}; "
                "pass a .model file written by sentencepiece or `unio tokenizer text`"
            ) from None
        self.path = Path(path) if path is not None else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if path.is_dir():
            models = sorted(path.glob("*.model"))
            if not models:
                raise TokenizerError(f"no SentencePiece .model file in {path}; pass the .model file itself")
            path = models[0]
        if not path.is_file():
            raise TokenizerError(f"text tokenizer {path} does not exist; train one with `unio tokenizer text` "
                                 "or pass the path of an existing SentencePiece .model file")
        return cls(path.read_bytes(), path)

    @classmethod
    def train(
        cls,
        texts_or_files: Iterable[str] | str | Path,
        vocab_size: int,
        path: str | Path,
        *,
        model_type: str = "bpe",
        user_defined_symbols: Sequence[str] = (),
        max_sentences: int = 2_000_000,
    ) -> "TextTokenizer":
        """Train a SentencePiece model and write it to ``path`` (a ``.model`` file).

        ``texts_or_files`` is an iterable of strings, or of paths of UTF-8 text files (one
        sentence per line), or a single such path.
        """
        if isinstance(texts_or_files, (str, Path)):  # one text or one file, never its characters
            texts_or_files = [texts_or_files]
        sentences = list(_iter_sentences(texts_or_files, max_sentences))
        if not sentences:
            raise TokenizerError("no text to train the tokenizer on: pass strings or non-empty text files")
        if vocab_size < 300:
            raise TokenizerError(f"vocab_size={vocab_size} is too small: byte fallback alone needs 256 pieces "
                                 "plus the special ones; use at least 300")
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=buf,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                character_coverage=1.0,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=BOS_ID,
                user_defined_symbols=list(user_defined_symbols),
                hard_vocab_limit=False,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise TokenizerError(f"SentencePiece training failed: {exc}") from None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        return cls(buf.getvalue(), path)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def eos_id(self) -> int:
        if self.sp.eos_id() < 0:
            raise TokenizerError("this SentencePiece model defines no end-of-sequence piece; "
                                 "train it with eos_id set (unio's models use eos_id=1)")
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        """The pad id; models without one (LLaMA's) pad with unk, which is never a label."""
        return self.sp.pad_id() if self.sp.pad_id() >= 0 else self.sp.unk_id()

    @property
    def bos_id(self) -> int:
        """Decoder start id: bos where the model has one, else pad (T5's convention)."""
        return self.sp.bos_id() if self.sp.bos_id() >= 0 else self.pad_id

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    @property
    def special_ids(self) -> list[int]:
        ids = {self.sp.pad_id(), self.sp.eos_id(), self.sp.bos_id(), self.sp.unk_id()}
        return sorted(i for i in ids if i >= 0)

    @property
    def model_proto(self) -> bytes:
        return self._proto

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()

    def id_to_piece(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"expected a str to encode, got {type(text).__name__}")
        ids = self.sp.EncodeAsIds(text)
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise TokenizerError(f"text ids {bad[:5]} are outside this tokenizer's range [0, {n}); "
                                 "map global ids to text ids with UnifiedVocab.split first")
        return self.sp.DecodeIds(ids)

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        add_eos: bool = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode and right-pad: ``{"input_ids": (B, L), "attention_mask": (B, L)}`` long tensors."""
        import torch  # here, so that training a tokenizer from the CLI does not load torch

        seqs = [self.encode(t, add_eos=add_eos) for t in texts]
        if max_length is not None:
            seqs = [s[:max_length] for s in seqs]
        length = max((len(s) for s in seqs), default=0)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special: bool = True) -> list[str]:
        special = set(self.special_ids) - {self.unk_id} if skip_special else set()
        return [self.decode([i for i in row if int(i) not in special]) for row in batch]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, path={str(self.path) if self.path else None!r})"


_TEXT_SUFFIXES = {".txt", ".text", ".jsonl", ".tsv", ".csv"}


def _is_file(item: str) -> bool:
    try:
        return "\n" not in item and len(item) < 4096 and Path(item).is_file()
    except (OSError, ValueError):  # name too long, NUL byte: a sentence, not a path
        return False


def _is_dir(item) -> bool:
    try:
        if isinstance(item, str) and ("\n" in item or len(item) >= 4096):
            return False
        return Path(item).is_dir()
    except (OSError, ValueError):
        return False


def _iter_sentences(items, limit: int):
    count = 0
    for item in items:
        if not isinstance(item, (str, Path)):
            raise TokenizerError(f"training items must be strings or text-file paths, got {type(item).__name__}")
        if _is_dir(item):
            raise TokenizerError(f"{item} is a directory; pass the text files in it (e.g. {item}/*.txt)")
        if isinstance(item, str) and not _is_file(item) and not any(c.isspace() for c in item) \
                and Path(item).suffix in _TEXT_SUFFIXES:
            # A lone "name.txt" is far likelier a mistyped path than a training sentence.
            raise TokenizerError(f"training text file {item} does not exist; check the path "
                                 "(files are UTF-8, one sentence per line)")
        if isinstance(item, Path) or _is_file(item):
            if not Path(item).is_file():
                raise TokenizerError(f"training text file {item} does not exist; check the path")
            try:
                lines = Path(item).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise TokenizerError(f"could not read training text file {item}: {exc}") from None
        else:
            lines = [item]
        for line in lines:
            if line:
                yield line
                count += 1
                if count >= limit:
                    return

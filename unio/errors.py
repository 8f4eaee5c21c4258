"""Every error unio raises on bad input derives from :class:`UnioError`.

Each message says what was wrong and what to do about it; the CLI prints the message alone
(no traceback) and exits non-zero.
"""
from __future__ import annotations

__all__ = [
    "UnioError", "InputError", "ImageError", "BoxError", "TaskError", "PromptError",
    "TokenizerError", "VocabMismatchError", "CheckpointError", "RecipeError", "DataError", "BackendError",
]


class UnioError(Exception):
    """Base class of all errors unio raises for bad input or a bad environment."""


class InputError(UnioError, ValueError):
    """An argument has the wrong type, shape or value."""


class ImageError(InputError):
    """An image could not be read or has an unusable shape."""


class BoxError(InputError):
    """A box or point is NaN, inverted, degenerate or otherwise unusable."""


class TaskError(UnioError, KeyError):
    """An unknown task, or a task called without the inputs it needs."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PromptError(UnioError, ValueError):
    """A prompt template is empty, malformed, or its placeholders do not match."""


class TokenizerError(UnioError, ValueError):
    """A tokenizer file is missing, unreadable, or given ids it cannot decode."""


class VocabMismatchError(UnioError):
    """A checkpoint was made with other tokenizers than the ones supplied."""


class CheckpointError(UnioError):
    """A model / export / run directory is missing files or is inconsistent."""


class RecipeError(UnioError, ValueError):
    """A training recipe is malformed: unknown key, wrong type, missing file."""


class DataError(UnioError, ValueError):
    """A dataset file or record is missing or malformed."""


class BackendError(UnioError):
    """An inference backend or exporter is not installed, or cannot do what was asked (an operator
    ONNX cannot express, a decoding mode onnxruntime does not run)."""

"""Fixtures shared by the test modules: one torch thread, the shipped shapes tokenizers, and
untrained micro exports (the API, CLI, evaluation and demo run on them in seconds)."""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import unio
from unio.resources import data_path

# A network small enough that every task runs in milliseconds; its answers are noise, its
# interfaces are the real ones.
MICRO = dict(d_model=64, encoder_layers=1, decoder_layers=1, num_heads=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Torch on one thread: on a shared 2-core machine two threads stall each other badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shipped_tokenizers() -> Path:
    """tokenizers/shapes as installed: text.model and the trained VQ image tokenizer."""
    d = data_path("tokenizers", "shapes")
    assert (d / "text.model").is_file() and (d / "image" / "config.json").is_file(), d
    return d


def stop(proc) -> None:
    """End a server started by a test: terminate, then kill if it does not go within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def write_micro_tokenizers(folder, image_tokenizer: bool = True) -> Path:
    """The shipped text tokenizer next to a small untrained FSQ image tokenizer (125 codes, 64
    per 64 px image): every image task runs, ten times faster than with the shipped one."""
    from unio.tokenizers.image import ImageTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(shipped_tokenizers() / "text.model", folder / "text.model")
    if image_tokenizer:
        torch.manual_seed(0)
        ImageTokenizer(image_size=64, downsample=8, channels=(8, 8, 16), levels=(5, 5, 5)).save(folder / "image")
    return folder


def write_micro_export(out, tokenizers, **dims) -> Path:
    """An untrained export directory with the shapes classes (``unio init`` with MICRO dims)."""
    from unio.export import init_export
    from unio.data.shapes import shapes_classes

    torch.manual_seed(0)
    return init_export("tiny", tokenizers, out, classes=shapes_classes(), quiet=True, **{**MICRO, **dims})


@pytest.fixture(scope="session")
def micro_export(tmp_path_factory) -> Path:
    """Untrained micro network with the shipped tokenizers (read-only: copy it to change it)."""
    return write_micro_export(tmp_path_factory.mktemp("micro") / "model", shipped_tokenizers())


@pytest.fixture(scope="session")
def micro_tokenizers(tmp_path_factory) -> Path:
    return write_micro_tokenizers(tmp_path_factory.mktemp("micro-tokenizers"))


@pytest.fixture(scope="session")
def micro_fast_export(tmp_path_factory, micro_tokenizers) -> Path:
    """Untrained micro network with the small image tokenizer, for whole-benchmark runs (read-only)."""
    return write_micro_export(tmp_path_factory.mktemp("micro-fast") / "model", micro_tokenizers)


@pytest.fixture(scope="module", params=["shapes-demo", "micro"])
def demo_or_micro(request, micro_export):
    """The shipped model, then the untrained micro one (near-uniform logits: long answers, ties), on
    the CPU with one thread: for tests that compare two decoding paths."""
    torch.set_num_threads(1)
    return unio.load("shapes-demo" if request.param == "shapes-demo" else micro_export, device="cpu")

"""The IDX reader (MNIST, Fashion-MNIST, EMNIST, KMNIST): files it writes itself, and Debian's
Fashion-MNIST when installed; read by unio eval's data specs, recipes and the tokenizer trainer."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from unio.data.idx import FASHION_MNIST, IdxSource, read_idx
from unio.data.pictures import make_pictures
from unio.data.specs import open_data
from unio.errors import DataError
from unio.evaluate import evaluate

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype({0x08: np.uint8, 0x0C: ">i4"}[code]).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def fashion(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    labels = np.arange(24) % 10
    return (write_idx(tmp_path / "fashion-train-images-idx3-ubyte.gz", images),
            write_idx(tmp_path / "fashion-train-labels-idx1-ubyte", labels), images, labels)


def test_reads_images_and_labels_raw_or_gzipped(fashion):
    images_path, labels_path, images, labels = fashion
    assert np.array_equal(read_idx(images_path), images) and np.array_equal(read_idx(labels_path), labels)
    source, entry = open_data(f"idx:images={images_path},labels={labels_path}")
    assert entry == {"source": "idx", "images": str(images_path), "labels": str(labels_path)}
    assert len(source) == 24 and source.classes == list(FASHION_MNIST)  # "fashion" in the name: its class names
    sample = source[3]
    assert sample["label"] == FASHION_MNIST[3] and sample["image"].size == (28, 28) and sample["image"].mode == "RGB"
    assert np.array_equal(np.asarray(sample["image"])[..., 0], images[3])
    assert IdxSource(images_path, labels_path, names="digits")[3]["label"] == "3"


def test_bad_files_say_what_is_wrong(fashion, tmp_path):
    images_path, labels_path, images, _ = fashion
    (tmp_path / "x.idx").write_bytes(b"PK\x03\x04not idx")
    with pytest.raises(DataError, match="is not an IDX file"):
        read_idx(tmp_path / "x.idx")
    raw = gzip.decompress(images_path.read_bytes())
    (tmp_path / "cut").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "cut")
    short = write_idx(tmp_path / "short-labels", np.arange(5))
    with pytest.raises(DataError, match="expected 24 labels"):
        IdxSource(images_path, short)
    with pytest.raises(DataError, match="names='colours'"):
        IdxSource(images_path, labels_path, names="colours")


def test_unio_eval_and_the_tokenizer_trainer_read_it(fashion, micro_export):
    images_path, labels_path, _, _ = fashion
    spec = f"idx:images={images_path},labels={labels_path}"
    res = evaluate(micro_export, spec, tasks=["classify"], n=6, progress=False)
    assert res["classify"]["n"] == 6 and 0 <= res["classify"]["accuracy"] <= 1
    train, held = make_pictures(spec, 32), make_pictures(spec, 32, held_out=True)
    assert train.batch([0, 1]).shape == (2, 3, 32, 32) and len(held.files) == 1 and len(train.files) == 23


def test_a_recipe_takes_idx_files(fashion, tmp_path):
    from unio.recipe import load_recipe
    images_path, labels_path, _, _ = fashion
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# unio train r.yaml\nmodel: {{preset: tiny}}\ntokenizers: tokenizers/shapes\n"
                      f"data: {{train: [{{source: idx, images: {images_path}, labels: {labels_path}, "
                      f"tasks: {{classify: 1}}}}]}}\nout: {tmp_path / 'run'}\n")
    entry = load_recipe(recipe)["data"]["train"][0]
    assert entry["images"] == str(images_path) and entry["source"] == "idx"


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                                                "(apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist():
    source, _ = open_data(f"idx:images={DEBIAN / 't10k-images-idx3-ubyte.gz'},"
                          f"labels={DEBIAN / 't10k-labels-idx1-ubyte.gz'}")
    assert len(source) == 10000 and source.classes == list(FASHION_MNIST)
    counts = np.bincount(source.labels)
    assert counts.tolist() == [1000] * 10  # the official test split is balanced
    assert source[0]["image"].size == (28, 28) and source[0]["label"] == "Ankle boot"

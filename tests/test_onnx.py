"""The ONNX export and the onnxruntime backend: ``unio export DIR OUT --onnx`` writes the graphs,
``unio.load(OUT, backend="onnxruntime")`` gives the torch backend's outputs task by task (greedy,
sampled with the same seed, teacher-forced scores), and each bad input ends in one clear error."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import unio  # noqa: E402
from unio.backends.onnx_export import export_onnx  # noqa: E402
from unio.cli.main import main as cli  # noqa: E402
from unio.data.shapes import ShapesWorld  # noqa: E402
from unio.errors import BackendError, CheckpointError, InputError, VocabMismatchError  # noqa: E402
from unio.model import modeling_unio  # noqa: E402


@pytest.fixture(scope="module")
def onnx_demo(tmp_path_factory):
    """shapes-demo with its graphs, written through the command line."""
    out = tmp_path_factory.mktemp("onnx") / "shapes-demo-onnx"
    assert cli(["export", "shapes-demo", str(out), "--onnx"]) in (0, None)
    return out


@pytest.fixture(scope="module")
def pipes(onnx_demo):
    return unio.load("shapes-demo", device="cpu"), unio.load(onnx_demo, backend="onnxruntime")


@pytest.fixture(scope="module")
def images():
    world = ShapesWorld(seed=77)
    return [world[i]["image"] for i in range(3)]


def same(a, b) -> bool:
    """Equal outputs; scores (log-probabilities through float32 kernels) to 1e-5."""
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "convert"):  # PIL
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, float):
        return a == pytest.approx(b, abs=1e-5)
    if hasattr(a, "to_dict"):
        da, db = a.to_dict(), b.to_dict()
        return da.keys() == db.keys() and all(same(da[k], db[k]) for k in da)
    if isinstance(a, str) and hasattr(a, "score"):
        return str(a) == str(b) and same(a.score, b.score)
    return a == b


CALLS = {
    "caption": lambda p, im: p.caption(im),
    "vqa": lambda p, im: p.ask(im, "what color is the largest object?"),
    "classify": lambda p, im: p.classify(im),
    "detect": lambda p, im: p.detect(im, max_objects=5),
    "ground": lambda p, im: p.ground(im, "the red object"),
    "depth": lambda p, im: p.depth(im),
    "generate_image": lambda p, im: p.generate_image("a small red star", seed=5, candidates=1),
    "score": lambda p, im: p.score(im[0], ["a small red circle", "a large blue star"]),
    "sampled": lambda p, im: (torch.manual_seed(0), p.caption(im, do_sample=True, top_k=5))[1],
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_onnxruntime_gives_the_torch_outputs(pipes, images, call):
    torch_pipe, ort_pipe = pipes
    assert same(CALLS[call](ort_pipe, images), CALLS[call](torch_pipe, images))


def test_the_graphs_carry_the_fingerprint_and_the_export_records_them(onnx_demo, pipes):
    meta = json.loads((onnx_demo / "unio.json").read_text())
    assert meta["onnx"]["encoder"] == "encoder.onnx" and meta["onnx"]["decoder"] == "decoder.onnx"
    for name in ("encoder", "decoder"):
        tags = {p.key: p.value for p in onnx.load(str(onnx_demo / f"{name}.onnx")).metadata_props}
        assert tags["unio.graph"] == name and tags["unio.vocab_fingerprint"] == meta["vocab_fingerprint"]
    assert (onnx_demo / "model.safetensors").is_file()  # beside the weights: still a torch export too
    assert "3.6M parameters" in repr(pipes[1])


def test_decoding_is_incremental(pipes, images, monkeypatch):
    """One decoder call per generated token, each over one new id with the cache of the ones before."""
    ort_pipe = pipes[1]
    seen = []
    step = ort_pipe.model.step
    monkeypatch.setattr(ort_pipe.model, "step", lambda ids, pk, *rest: seen.append((ids.shape[1], pk.shape[3]))
                        or step(ids, pk, *rest))
    ort_pipe.caption(images[0])
    assert seen and all(new == 1 for new, _ in seen) and [past for _, past in seen] == list(range(len(seen)))


def test_beam_search_is_refused_with_what_to_do(pipes, images):
    with pytest.raises(BackendError, match="backend='torch'"):
        pipes[1].caption(images[0], num_beams=3)


def test_unsupported_operator_is_named(micro_export, tmp_path, monkeypatch):
    def forward(self, x):  # an operator the exporter has no ONNX translation for
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(torch.special.bessel_j0(gate) * up)

    monkeypatch.setattr(modeling_unio.GatedMLP, "forward", forward)
    with pytest.raises(BackendError, match="special_bessel_j0"):
        export_onnx(micro_export, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_graphs_of_other_tokenizers_are_refused(onnx_demo, micro_tokenizers, tmp_path):
    from conftest import write_micro_export
    other = export_onnx(write_micro_export(tmp_path / "micro", micro_tokenizers), tmp_path / "micro-onnx")
    for name in ("encoder.onnx", "decoder.onnx"):  # shapes-demo's graphs in a model with other tokenizers
        shutil.copy(onnx_demo / name, other / name)
    with pytest.raises(VocabMismatchError, match="other tokenizers"):
        unio.load(other, backend="onnxruntime")


def test_tokenizers_that_do_not_match_are_refused(onnx_demo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(onnx_demo, bad)
    from unio.tokenizers.text import TextTokenizer
    TextTokenizer.train(["a completely different corpus of words"] * 50, 300, bad / "text.model")
    with pytest.raises(VocabMismatchError, match="text tokenizer"):
        unio.load(bad, backend="onnxruntime")


def test_missing_graphs_and_plain_exports(onnx_demo, micro_export, tmp_path):
    with pytest.raises(CheckpointError, match="--onnx"):
        unio.load(micro_export, backend="onnxruntime")  # no graphs written
    partial = tmp_path / "partial"
    shutil.copytree(onnx_demo, partial)
    (partial / "decoder.onnx").unlink()
    with pytest.raises(CheckpointError, match="decoder.onnx"):
        unio.load(partial, backend="onnxruntime")
    (partial / "encoder.onnx").write_bytes(b"not a graph")
    shutil.copy(onnx_demo / "decoder.onnx", partial / "decoder.onnx")
    with pytest.raises(CheckpointError, match="encoder.onnx"):
        unio.load(partial, backend="onnxruntime")


def test_bad_arguments(onnx_demo, micro_export, tmp_path, monkeypatch, capsys):
    with pytest.raises(InputError, match="unknown backend"):
        unio.load(onnx_demo, backend="tensorrt")
    with pytest.raises(InputError, match="float32"):
        unio.load(onnx_demo, backend="onnxruntime", dtype="bfloat16")
    with pytest.raises(CheckpointError, match="shipped"):
        export_onnx("shapes-demo")  # never into the package's own folder
    assert cli(["export", "shapes-demo", str(tmp_path / "x"), "--onnx", "--dtype", "float16"]) == 2
    assert "--dtype" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    with pytest.raises(BackendError, match=r"pip install \"unio\[onnx\]\""):
        unio.load(onnx_demo, backend="onnxruntime")


def test_the_command_line_runs_onnxruntime(onnx_demo, images, tmp_path, capsys):
    """unio predict and unio eval take --backend onnxruntime and answer as torch does."""
    import json
    path = tmp_path / "a.png"
    images[0].save(path)
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.jsonl"
        assert cli(["predict", "detect", str(path), "--model", str(onnx_demo), "--backend", backend,
                    "--out", str(out)]) in (0, None)
        outs[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["labels"] for r in outs["torch"]] == [r["labels"] for r in outs["onnxruntime"]]
    assert cli(["eval", "--model", str(onnx_demo), "--backend", "onnxruntime", "--tasks", "vqa", "--n", "4",
                "--data", "shapes:5", "--out", str(tmp_path / "m.json")]) in (0, None)
    run = json.loads((tmp_path / "m.json").read_text())["run"]
    assert run["backend"] == "onnxruntime"
    assert cli(["predict", "detect", str(path), "--model", str(onnx_demo), "--backend", "onnxruntime",
                "--option", "num_beams=3"]) != 0
    assert "backend='torch'" in capsys.readouterr().err

"""The `unio` command frame: help, `python -m unio`, and errors printed as one line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unio import __version__
from unio.cli import main

SUBCOMMANDS = ["predict", "train", "eval", "export", "init", "tokenizer", "shapes", "demo", "serve"]


def unio_script() -> str:
    found = shutil.which("unio") or str(Path(sys.executable).with_name("unio"))
    assert Path(found).exists(), "the `unio` console script is not installed: pip install -e ."
    return found


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_help_lists_the_subcommands():
    result = run(unio_script(), "--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_python_dash_m_is_the_same_command():
    via_module = run(sys.executable, "-m", "unio", "--help")
    assert via_module.returncode == 0, via_module.stderr
    assert via_module.stdout == run(unio_script(), "--help").stdout
    version = run(sys.executable, "-m", "unio", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"unio {__version__}"


def test_unio_error_is_one_line_without_traceback(tmp_path):
    out = tmp_path / "tok" / "text.model"
    result = run(unio_script(), "tokenizer", "text", "--input", str(tmp_path / "nonexistent.txt"),
                 "--vocab-size", "300", "--out", str(out))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("unio tokenizer: error: ")
    assert "nonexistent.txt does not exist; check the path" in lines[0]
    assert not out.exists()


# In-process checks of the same frame (fast; no subprocess).
def test_tokenizer_text_trains_and_reports(tmp_path, capsys):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(f"a {c} circle above a {d} square" for c in ("red", "blue", "green")
                                for d in ("orange", "purple")), encoding="utf-8")
    out = tmp_path / "text.model"
    assert main(["tokenizer", "text", "--input", str(corpus), "--vocab-size", "300", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    from unio.tokenizers import TextTokenizer
    tok = TextTokenizer.load(out)
    assert tok.decode(tok.encode("a red circle")) == "a red circle"

def test_errors_in_process(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["tokenizer", "text", "--input", str(empty), "--vocab-size", "300", "--out", str(tmp_path / "x.model")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no text to train the tokenizer on" in err
    code = main(["tokenizer", "text", "--input", str(tmp_path), "--vocab-size", "300", "--out", str(tmp_path / "x")])
    assert code == 2 and "is a directory; pass the text files in it" in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err

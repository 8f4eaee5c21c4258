"""Prompt templates: the shipped YAML, placeholder checks, rendering (a {region} becomes 4 location tokens)."""
import numpy as np
import pytest

from unio.errors import PromptError
from unio.prompts import PLACEHOLDERS, Prompts
from unio.resources import data_path
from unio.tasks import TASKS, TaskContext, get_task, placeholders_by_task


@pytest.fixture(scope="module")
def prompts():
    return Prompts.load()


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_prompts_cover_every_task_with_paraphrases(prompts):
    assert data_path("prompts").is_dir()
    expected = placeholders_by_task()
    for name in TASKS:
        assert name in prompts, name
        assert prompts.canonical(name).strip()
        assert len(prompts.paraphrases(name)) >= 5, name
        assert prompts.placeholders(name) == expected[name], name
        assert len(set(prompts.templates(name))) == len(prompts.templates(name)), f"duplicate template in {name}"
    prompts.check(expected)


def test_canonical_at_inference_and_every_template_in_training(prompts):
    assert prompts.choose("detect") == prompts.canonical("detect")
    rng = np.random.default_rng(0)
    seen = {prompts.choose("detect", rng) for _ in range(200)}
    assert seen == set(prompts.templates("detect"))


def test_render_region_and_text(prompts):
    parts = prompts.render("inpaint", region=(1, 2, 30, 40), text="a red circle")
    assert ("region", (1, 2, 30, 40)) in parts
    assert any(kind == "text" and "a red circle" in value for kind, value in parts)
    assert prompts.render_text("ground", expression="the {odd} one") == "Where is the {odd} one?"


def test_render_missing_value_is_an_error(prompts):
    with pytest.raises(PromptError, match=r"needs a value for \{question\}"):
        prompts.render("vqa")


def test_unknown_placeholder_is_refused_at_load(tmp_path):
    path = write(tmp_path, 'caption:\n  canonical: "Describe {image}."\n  paraphrases: []\n')
    with pytest.raises(PromptError, match=r"unknown placeholder \{image\}"):
        Prompts.load(path)


def test_missing_placeholder_in_a_paraphrase_is_refused(tmp_path):
    path = write(tmp_path, 'ground:\n  canonical: "Where is {expression}?"\n  paraphrases: ["Find it."]\n')
    with pytest.raises(PromptError, match=r"missing \['expression'\]"):
        Prompts.load(path)


def test_malformed_braces_are_refused(tmp_path):
    path = write(tmp_path, 'vqa:\n  canonical: "{question"\n')
    with pytest.raises(PromptError, match="malformed braces"):
        Prompts.load(path)


def test_literal_braces_are_kept(tmp_path):
    p = Prompts.load(write(tmp_path, 'vqa:\n  canonical: "{{json}} {question}"\n'))
    assert p.render_text("vqa", question="q?") == "{json} q?"


def test_empty_prompt_unknown_key_and_bad_yaml(tmp_path):
    with pytest.raises(PromptError, match="non-empty string"):
        Prompts.load(write(tmp_path, 'caption:\n  canonical: "  "\n'))
    with pytest.raises(PromptError, match="unknown keys"):
        Prompts.load(write(tmp_path, 'caption:\n  canonical: "x"\n  paraphrase: ["y"]\n'))
    with pytest.raises(PromptError, match="not valid YAML"):
        Prompts.load(write(tmp_path, 'caption: [unclosed\n'))
    with pytest.raises(PromptError, match="no prompt templates"):
        Prompts.load(tmp_path / "nothing-here")


def test_a_task_in_two_files_is_refused(tmp_path):
    write(tmp_path, 'caption:\n  canonical: "A."\n', "a.yaml")
    write(tmp_path, 'caption:\n  canonical: "B."\n', "b.yaml")
    with pytest.raises(PromptError, match="in both"):
        Prompts.load(tmp_path)


def test_templates_must_match_what_the_task_fills(tmp_path):
    prompts = Prompts.load(write(tmp_path, 'ground:\n  canonical: "Where is {question}?"\n'))
    with pytest.raises(PromptError, match="task fills"):
        prompts.check({"ground": {"expression"}})
    tok = data_path("tokenizers", "shapes")
    with pytest.raises(PromptError, match="ground"):
        TaskContext.from_dir(tok, image_size=64, patch_size=8, prompts_dir=tmp_path)


def test_save_load_round_trip_and_texts(tmp_path, prompts):
    prompts.save(tmp_path / "copy")
    again = Prompts.load(tmp_path / "copy")
    assert again.to_dict() == prompts.to_dict()
    texts = prompts.texts()
    assert "Describe the image." in texts and not any("{" in t for t in texts)
    assert set(PLACEHOLDERS) == {"question", "expression", "region", "text", "labels"}


def test_region_is_four_location_tokens_inside_the_prompt_ids():
    ctx = TaskContext.from_dir(data_path("tokenizers", "shapes"), image_size=64, patch_size=8)
    box = (30.0, 10.0, 90.0, 50.0)
    ex = get_task("describe_region").build({"image": np.zeros((120, 300, 3), np.uint8)}, ctx, box=box)
    kinds = ctx.vocab.kinds(ex.input_ids).tolist()
    loc = [i for i, k in zip(ex.input_ids, kinds) if k == 1]
    assert loc == [int(i) for i in ctx.vocab.location_ids(ctx.locations.encode_boxes(box, (300, 120)))]
    first = kinds.index(1)
    assert kinds[first:first + 4] == [1, 1, 1, 1]  # contiguous, with text on both sides
    assert 0 in kinds[:first] and 0 in kinds[first + 4:]
    assert ex.input_ids[-1] == ctx.vocab.eos_id
    assert "<box 30,10,90,50>" in ex.prompt

"""Recipes: YAML -> dataclasses, overrides, and every error reported at once with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gptune.config import Recipe
from gptune.errors import GptuneError
from gptune.recipe_docs import field_docs, iter_fields
from gptune.recipes import build_recipe, load_recipe, parse_override, recipe_diff, shipped

RECIPES = list(shipped().values())


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    # the first line says how to run it (STYLE 4)
    assert path.read_text().startswith("#")


def test_precedence_defaults_yaml_flags_sets(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("name: x\ntrain: {max_steps: 10, lr: 1.0e-3}\nmodel: {tokenizer: train}\n")
    r = load_recipe(f, {"train.max_steps": 20, "train.lr": None}, ["train.max_steps=30", "model.config.n_layer=3"])
    assert r.train.max_steps == 30  # --set beats the flag, the flag beats YAML
    assert r.train.lr == 1e-3  # a flag left at None does not override YAML
    assert r.model.config.n_layer == 3
    assert r.train.micro_batch_size == Recipe().train.micro_batch_size  # default kept


def test_all_problems_reported_at_once_with_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trian: {}\nmodel: {tokenizer: train, config: {n_embd: 250, n_head: 4}}\n"
                 "train: {max_steps: 5, lr: -1, micro_batch_size: two}\ndata: {block_sise: 3}\n")
    with pytest.raises(GptuneError) as e:
        load_recipe(f)
    text = str(e.value)
    assert "trian: unknown key (did you mean train?)" in text
    assert "data.block_sise: unknown key (did you mean data.block_size?)" in text
    assert "train.lr: must be > 0, got -1" in text
    assert "train.micro_batch_size: expected int, got 'two'" in text
    assert "model.config.n_embd: must be divisible by model.config.n_head=4" in text
    assert len(e.value.problems) == 5


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train:\n  lr: 1\n  max_steps: [1,\n")
    with pytest.raises(GptuneError, match=r"broken.yaml: line \d+, column \d+: YAML syntax error"):
        load_recipe(f)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(GptuneError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "item,expected",
    [("train.lr=6e-4", ("train.lr", 6e-4)), ("train.max_steps=200", ("train.max_steps", 200)),
     ("model.name_or_path=null", ("model.name_or_path", None)), ("train.compile=true", ("train.compile", True)),
     ("lora.target_modules=[c_attn,c_fc]", ("lora.target_modules", ["c_attn", "c_fc"]))],
)
def test_parse_override_values(item, expected):
    assert parse_override(item) == expected


def test_override_without_equals_is_refused():
    with pytest.raises(GptuneError, match="expected key=value"):
        build_recipe({}, None, ["train.lr"])


def test_int_accepted_for_float_but_not_bool_for_int():
    r = build_recipe({"model": {"tokenizer": "train"}, "train": {"lr": 1, "max_steps": 3}})
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)
    with pytest.raises(GptuneError, match="train.max_steps: expected"):
        build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": True}})


def test_literal_choices_named():
    with pytest.raises(GptuneError, match="train.schedule: expected 'cosine' \\| 'linear' \\| 'constant', got 'cos'"):
        build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 3, "schedule": "cos"}})


def test_unquoted_no_is_the_literal_no_not_a_bool(tmp_path):
    # YAML 1.1 reads an unquoted `no` as False; `--set train.mixed_precision=no` must still mean "no"
    r = build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 3}}, None, ["train.mixed_precision=no"])
    assert r.train.mixed_precision == "no"
    f = tmp_path / "r.yaml"
    f.write_text("model: {tokenizer: train}\ntrain: {max_steps: 3, mixed_precision: no}\n")
    assert load_recipe(f).train.mixed_precision == "no"
    with pytest.raises(GptuneError, match="train.mixed_precision"):
        build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 3}}, None, ["train.mixed_precision=yes"])


def test_round_trip_through_yaml_is_identical():
    r = build_recipe({"name": "rt", "model": {"tokenizer": "train"}, "train": {"max_steps": 7}})
    again = build_recipe(yaml.safe_load(r.to_yaml("# header")))
    assert again == r
    assert recipe_diff(again.to_dict(), r.to_dict()) == []


def test_recipe_diff_names_dotted_keys():
    a = build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 7}}).to_dict()
    b = build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 9, "lr": 1e-3}}).to_dict()
    assert recipe_diff(a, b) == ["train.lr", "train.max_steps"]


def test_every_field_is_documented():
    undocumented = [key for key, _, _, doc in iter_fields() if not doc]
    assert undocumented == []
    assert "Peak learning rate" in field_docs(type(Recipe().train))["lr"]


def test_docs_recipe_reference_is_up_to_date():
    from gptune.recipe_docs import recipe_reference

    doc = Path(__file__).parents[1] / "docs" / "recipes.md"
    assert doc.read_text() == recipe_reference() + "\n", "run: gptune recipes docs > docs/recipes.md"


def test_whole_numbers_in_exponent_form_are_ints_and_fractions_are_not():
    r = build_recipe({"model": {"tokenizer": "t"}, "train": {"max_steps": 1}}, sets=["data.max_tokens=2e9"])
    assert r.data.max_tokens == 2_000_000_000 and isinstance(r.data.max_tokens, int)
    with pytest.raises(GptuneError, match=r"data\.max_tokens: expected int or null, got 2\.5"):
        build_recipe({"model": {"tokenizer": "t"}, "train": {"max_steps": 1}}, sets=["data.max_tokens=2.5"])


# ----------------------------------------------------------------------------- validation in code (#27)
def test_a_section_built_in_code_validates_itself_naming_the_key():
    from gptune.config import ArchConfig, LoraConfig, TrainConfig

    with pytest.raises(GptuneError, match=r"^train\.lr: must be > 0, got -1$"):
        TrainConfig(max_steps=1, lr=-1)
    with pytest.raises(GptuneError) as e:  # every problem of the section at once
        ArchConfig(n_layer=0, dropout=1.5)
    assert e.value.problems == ["model.config.n_layer: must be > 0, got 0",
                                "model.config.dropout: must be in [0, 1), got 1.5"]
    from gptune.config import ModelConfig

    with pytest.raises(GptuneError, match=r"^model\.config\.n_embd: must be divisible by model\.config\.n_head=3"):
        ModelConfig(tokenizer="train", config=ArchConfig(n_head=3, n_embd=32))
    import dataclasses

    with pytest.raises(GptuneError, match=r"lora\.r: must be > 0"):  # replace() re-validates
        dataclasses.replace(LoraConfig(), r=0)


def test_cross_section_checks_run_in_code_and_from_yaml_all_at_once():
    from gptune.config import LoraConfig

    with pytest.raises(GptuneError, match=r"^lora\.merge: folds LoRA adapters"):
        Recipe(lora=LoraConfig(merge=True))
    with pytest.raises(GptuneError) as e:
        build_recipe({"model": {"tokenizer": "train"}, "train": {"max_steps": 1, "lr": -1}, "lora": {"r": 0, "merge": True}})
    assert [p.split(":")[0] for p in e.value.problems] == ["train.lr", "lora.r", "lora.merge"]


def test_the_default_recipe_is_valid_but_not_complete():
    r = Recipe()
    with pytest.raises(GptuneError) as e:
        r.check_complete()
    assert [p.split(":")[0] for p in e.value.problems] == ["model.tokenizer", "train.max_steps"]


@pytest.mark.parametrize("pretrained", [False, True], ids=["random-init", "pretrained"])
def test_a_run_refuses_block_size_beyond_the_context_before_writing(tmp_path, monkeypatch, tiny_model_dir,
                                                                     pretrained):
    from gptune.runners.pretrain import run_pretrain

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a few words of text\n" * 50)
    model = {"name_or_path": tiny_model_dir} if pretrained else {"tokenizer": "train", "config": {"n_positions": 64}}
    r = build_recipe({"model": model, "out_dir": "runs/ctx", "data": {"path": "a.txt", "block_size": 128},
                      "train": {"max_steps": 1}})
    with pytest.raises(GptuneError, match=r"data\.block_size=128 is larger than the model's context \(64, "):
        run_pretrain(r)
    assert not (tmp_path / "runs").exists()  # refused before the run folder (or a tokenizer, shards) exists

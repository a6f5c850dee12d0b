"""The bad-input matrix: every case a user can hit ends in one line naming the file, field or value,
exit code 2, and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_text
from gptune.cli import main

TINY = (
    "# gptune pretrain r.yaml\nname: tiny\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64}}\n"
    "data: {path: books, block_size: 32, num_proc: 1}\n"
    "train: {max_steps: 2, micro_batch_size: 2, global_batch_size: 2, save_every: 2, log_every: 1}\n"
)


def setup_books(root: Path, recipe: str = TINY) -> None:
    (root / "books").mkdir(exist_ok=True)
    (root / "books" / "a.txt").write_text(make_text(300, 1))
    (root / "r.yaml").write_text(recipe)


def setup_glue(root: Path, rows: str, task_dir: str = "SST-2", header: str = "sentence\tlabel\n") -> None:
    d = root / "glue_data" / task_dir
    d.mkdir(parents=True, exist_ok=True)
    good = "".join(f"the {w} film .\t{i % 2}\n" for i, w in enumerate(["good", "bad"] * 4))
    (d / "train.tsv").write_text(header + rows)
    (d / "dev.tsv").write_text(header + good)


def ft(*extra):
    return ["finetune", "--task", "sst2", "--lora", "--model", "{model}", "--data-dir", "glue_data",
            "--set", "train.max_steps=1", *extra]


# (id, setup(root), argv, words that must appear in the one error line)
CASES = [
    ("missing-recipe", None, ["pretrain", "nope.yaml"], ["nope.yaml", "no such file"]),
    ("recipe-is-a-folder", lambda r: (r / "folder").mkdir(), ["pretrain", "folder"], ["folder", "recipe.yaml"]),
    ("recipe-not-utf8", lambda r: (r / "r.yaml").write_bytes(b"name: \xff\xfe\n"), ["pretrain", "r.yaml"],
     ["r.yaml", "cannot read"]),
    ("yaml-syntax", lambda r: (r / "r.yaml").write_text("train:\n  lr: [1,\n"), ["pretrain", "r.yaml"],
     ["line 3", "YAML syntax error"]),
    ("unknown-key", lambda r: setup_books(r, TINY + "trian: {lr: 1}\n"), ["pretrain", "r.yaml"],
     ["trian", "did you mean train"]),
    ("wrong-type", lambda r: setup_books(r), ["pretrain", "r.yaml", "--set", "train.max_steps=many"],
     ["train.max_steps", "expected"]),
    ("negative-lr", lambda r: setup_books(r), ["pretrain", "r.yaml", "--set", "train.lr=-1"],
     ["train.lr", "must be > 0"]),
    ("block-beyond-context", lambda r: setup_books(r), ["pretrain", "r.yaml", "--set", "data.block_size=128"],
     ["data.block_size=128", "context"]),
    ("lm-coef-negative", None, ft("--set", "task.lm_coef=-0.5"), ["task.lm_coef", ">= 0"]),
    ("lora-rank-zero", None, ft("--set", "lora.r=0"), ["lora.r", "> 0"]),
    ("missing-data", lambda r: setup_books(r), ["pretrain", "r.yaml", "--set", "data.path=nowhere"],
     ["data.path", "nowhere"]),
    ("empty-corpus", lambda r: (setup_books(r), (r / "books" / "a.txt").write_text("")),
     ["pretrain", "r.yaml"], ["empty"]),
    ("corpus-below-one-block", lambda r: (setup_books(r), (r / "books" / "a.txt").write_text("A cat.")),
     ["pretrain", "r.yaml"], ["block"]),
    ("not-utf8-text", lambda r: (setup_books(r), (r / "books" / "b.txt").write_bytes(b"ok \xe8 bad")),
     ["pretrain", "r.yaml"], ["b.txt", "byte offset 3", "fallback_encoding"]),
    ("glue-missing-column", lambda r: setup_glue(r, "the film .\t1\n", header="text\tlabel\n"), ft(),
     ["train.tsv", "sentence"]),
    ("glue-label-outside-set", lambda r: setup_glue(r, "a good film .\t7\n"), ft(),
     ["train.tsv", "7", "line 2"]),
    ("glue-empty-split", lambda r: setup_glue(r, ""), ft(), ["train.tsv", "no data rows"]),
    ("unknown-task", None, ["finetune", "--task", "sst3", "--model", "{model}"], ["sst3", "sst2", "cola"]),
    ("model-not-a-model", lambda r: (r / "notamodel").mkdir(),
     ["generate", "--model", "notamodel", "--prompt", "x"], ["notamodel", "not a model folder"]),
    ("tokenizer-larger-than-model", lambda r: setup_books(r),
     ["pretrain", "r.yaml", "--set", "model.name_or_path={model}", "--set", "model.tokenizer={bigtok}"],
     ["model.tokenizer", "embeddings"]),
    ("run-folder-taken", lambda r: (setup_books(r), (r / "runs" / "tiny").mkdir(parents=True),
                                    (r / "runs" / "tiny" / "metrics.jsonl").write_text("")),
     ["pretrain", "r.yaml"], ["runs/tiny", "already holds a run", "--overwrite"]),
    ("resume-nothing", lambda r: setup_books(r), ["pretrain", "r.yaml", "--resume", "auto"],
     ["--resume auto", "no complete checkpoint"]),
    ("resume-missing-path", lambda r: setup_books(r), ["pretrain", "r.yaml", "--resume", "runs/x/step-000002"],
     ["runs/x/step-000002", "no such checkpoint"]),
    ("bad-override-syntax", lambda r: setup_books(r), ["pretrain", "r.yaml", "--set", "train.lr"],
     ["--set train.lr", "key=value"]),
    ("num-processes-zero", lambda r: setup_books(r), ["pretrain", "r.yaml", "--num-processes", "0"],
     ["--num-processes", ">= 1"]),
    ("eval-two-modes", None, ["eval", "--ppl", "--glue"], ["choose one of"]),
]


@pytest.fixture()
def big_tokenizer_dir(tmp_path_factory):
    from conftest import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("bigtok"), vocab_size=600)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, tmp_path, monkeypatch, capsys, tiny_model_dir, big_tokenizer_dir):
    name, setup, argv, words = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTUNE_NO_PROGRESS", "1")
    monkeypatch.setenv("GPTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if setup:
        setup(tmp_path)
    argv = [a.replace("{model}", tiny_model_dir).replace("{bigtok}", big_tokenizer_dir) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines, err
    joined = " ".join(err.split())
    for w in words:
        assert w in joined, f"{name}: {w!r} not in {err!r}"

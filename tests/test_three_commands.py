"""The user's three bare commands, in order, each picking up what the one before produced."""

from __future__ import annotations

import json

import pytest

from conftest import make_text, run_cli_captured

BOOKS = (
    "# gptune pretrain recipes/books.yaml\nname: books\n"
    "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
    "data: {path: data/books, download_books: true, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
    "train: {max_steps: 12, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, save_every: 0, eval_every: 0}\n"
)


run_cli = run_cli_captured


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTUNE_NO_PROGRESS", "1")
    monkeypatch.setenv("GPTUNE_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # what the variable sets when huggingface_hub loads
    monkeypatch.delenv("GPTUNE_GLUE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "books.yaml").write_text(BOOKS)
    (tmp_path / "data" / "books").mkdir(parents=True)
    (tmp_path / "data" / "books" / "a.txt").write_text(make_text(800, 1))
    sst = tmp_path / "glue_data" / "SST-2"
    sst.mkdir(parents=True)
    rows = "".join(f"the {w} film .\t{int(w == 'good')}\n" for w in ["good", "bad"] * 20)
    (sst / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (sst / "dev.tsv").write_text("sentence\tlabel\n" + "".join(rows.splitlines(keepends=True)[:16]))
    return tmp_path


def test_pretrain_then_finetune_then_eval_ppl_bare(project, capsys):
    code, out, err = run_cli(capsys, "pretrain", "recipes/books.yaml")
    assert code == 0, err
    first = out.strip().splitlines()[0]
    assert "data/books" in first and "runs/books" in first
    assert (project / "runs" / "books" / "final" / "model.safetensors").exists()

    code, out, err = run_cli(capsys, "finetune", "--task", "sst2", "--lora")
    assert code == 0, err
    first = out.strip().splitlines()[0]
    assert "runs/books/final" in first and "glue_data" in first and "runs/finetune/sst2-lora" in first
    final = project / "runs" / "finetune" / "sst2-lora" / "final"
    info = json.loads((final / "task.json").read_text())
    assert info["base_model"] == "../../../books/final" and info["lora"] is True  # relative: the tree can move
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "runs/books/final" and adapter["task_type"] == "CAUSAL_LM"

    code, out, err = run_cli(capsys, "eval", "--ppl")
    assert code == 0, err
    first = out.strip().splitlines()[0]
    assert "runs/finetune/sst2-lora/final" in first and "sst2" in first  # the newest run, its own dev split

    # a second bare finetune does not overwrite the first
    code, out, err = run_cli(capsys, "finetune", "--task", "sst2", "--lora", "--set", "train.max_steps=1")
    assert code == 0, err
    assert (project / "runs" / "finetune" / "sst2-lora-2" / "final").exists()


def test_nothing_found_messages(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # what the variable sets when huggingface_hub loads
    monkeypatch.delenv("GPTUNE_GLUE_DIR", raising=False)
    code, _, err = run_cli(capsys, "finetune", "--task", "sst2", "--lora")
    assert code == 2 and "--model" in err
    code, _, err = run_cli(capsys, "eval", "--ppl")
    assert code == 2 and "pass --model" in err
    code, _, err = run_cli(capsys, "pretrain", "recipes/nobooks.yaml")  # recipes/books.yaml is shipped
    assert code == 2 and "recipes/nobooks.yaml" in err and "books, finetune, gpt1" in err


def test_finetune_without_glue_data_offline_names_the_flags(project, capsys, tiny_model_dir):
    import shutil

    shutil.rmtree(project / "glue_data")
    code, _, err = run_cli(capsys, "finetune", "--task", "sst2", "--lora", "--model", tiny_model_dir)
    assert code == 2 and "--data-dir" in err and "GPTUNE_GLUE_DIR" in err

"""Installed, not checked out: shipped recipes and Accelerate configs are package data found by name, and the
embedded public-domain corpus lets ``gptune pretrain recipes/books.yaml`` run offline on a fresh machine."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import yaml

from conftest import run_cli_captured
from gptune.recipes import all_shipped, read_recipe_file, resolve_shipped, shipped

SHRINK = ["--set", "train.max_steps=2", "--set", "model.vocab_size=400", "--set", "model.config.n_layer=1",
          "--set", "model.config.n_embd=32", "--set", "model.config.n_head=2", "--set", "data.max_tokens=20000",
          "--set", "train.eval_every=0", "--set", "train.save_every=0"]


run_cli = run_cli_captured


@pytest.fixture()
def fresh(tmp_path, monkeypatch):
    """An empty folder outside any checkout, no hub."""
    import huggingface_hub.constants as hc

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTUNE_NO_PROGRESS", "1")
    monkeypatch.setenv("GPTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_shipped_names_resolve_and_a_local_file_wins(fresh):
    assert set(shipped()) == {"books", "finetune", "gpt1"}
    assert set(shipped("accelerate")) == {"cpu2", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"}
    for arg in ("books", "books.yaml", "recipes/books.yaml", "./recipes/books.yaml"):
        assert resolve_shipped(arg) == shipped()["books"]
    assert resolve_shipped("recipes/accelerate/fsdp.yaml", "accelerate") == shipped("accelerate")["fsdp"]
    (fresh / "recipes").mkdir()
    (fresh / "recipes" / "books.yaml").write_text("name: mine\n")
    assert read_recipe_file("recipes/books.yaml") == {"name": "mine"}  # a file that exists is that file


def test_recipes_list_cp_and_unknown_names(fresh, capsys):
    code, out, _ = run_cli(capsys, "recipes", "list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert set(rows) == set(all_shipped()) and "public-domain books" in rows["books"]
    code, out, _ = run_cli(capsys, "recipes", "cp", "books")
    assert code == 0 and (fresh / "books.yaml").read_bytes() == shipped()["books"].read_bytes()
    code, _, err = run_cli(capsys, "recipes", "cp", "books")  # never replaces a file
    assert code == 2 and "books.yaml exists" in err
    code, _, _ = run_cli(capsys, "recipes", "cp", "accelerate/fsdp", "cfg")
    assert code == 0 and (fresh / "cfg").read_bytes() == shipped("accelerate")["fsdp"].read_bytes()
    code, _, err = run_cli(capsys, "recipes", "cp", "bookz")
    assert code == 2 and "accelerate/fsdp" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "pretrain", "bookz")
    assert code == 2 and "recipe bookz: no such file" in err and "books, finetune, gpt1" in err
    code, _, err = run_cli(capsys, "pretrain", "books", "--num-processes", "2", "--config-file", "fsdb")
    assert code == 2 and "--config-file fsdb" in err and "fsdp" in err


def test_config_file_by_name_goes_to_accelerate_launch():
    from gptune.distributed import Machines, launch_command

    cmd = launch_command(2, ["pretrain", "books"], 1234, Machines(config_file="deepspeed_zero2"))
    i = cmd.index("--config_file")
    assert Path(cmd[i + 1]) == shipped("accelerate")["deepspeed_zero2"] and "--multi_gpu" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[-2:] == ["pretrain", "books"]


def test_books_recipe_runs_offline_on_the_embedded_corpus(fresh, capsys):
    code, out, err = run_cli(capsys, "pretrain", "recipes/books.yaml", *SHRINK)
    assert code == 0, err
    first = out.strip().splitlines()[0]
    assert "data embedded" in first and "data/books is missing" in first and "runs/books" in first
    assert (fresh / "runs" / "books" / "final" / "model.safetensors").exists()
    saved = yaml.safe_load((fresh / "runs" / "books" / "recipe.yaml").read_text())
    assert saved["data"]["path"] == "embedded"  # what it read: the replay reads the same
    books = sorted((fresh / "cache" / "corpus").glob("books-*/*.txt"))
    packed = sorted(Path(str(shipped()["books"].parents[1] / "data" / "corpus")).glob("*.txt.xz"))
    assert [b.name for b in books] == [p.name.removesuffix(".xz") for p in packed] and len(books) == 13
    assert books[0].read_bytes() == lzma.decompress(packed[0].read_bytes())
    assert books[0].read_text(encoding="utf-8").startswith("[Emma by Jane Austen 1816]")
    caesar = lzma.decompress(packed[[p.name for p in packed].index("shakespeare-caesar.txt.xz")].read_bytes())
    assert (fresh / books[0].parent / "shakespeare-caesar.txt").read_text(encoding="utf-8") == caesar.decode("latin-1")


def test_an_existing_books_folder_is_read_as_before(fresh, capsys):
    from conftest import make_text

    (fresh / "data" / "books").mkdir(parents=True)
    (fresh / "data" / "books" / "a.txt").write_text(make_text(800, 1))
    code, out, err = run_cli(capsys, "pretrain", "books", *SHRINK, "--set", "data.val_fraction=0.2")
    assert code == 0, err
    assert "data data/books |" in out.strip().splitlines()[0]
    assert yaml.safe_load((fresh / "runs" / "books" / "recipe.yaml").read_text())["data"]["path"] == "data/books"
    assert not (fresh / "cache" / "corpus").exists()

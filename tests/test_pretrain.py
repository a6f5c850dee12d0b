"""Pretraining end to end on a 2-layer model through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_workdir, run_cli


@pytest.fixture()
def books(tmp_path, monkeypatch):
    make_workdir(tmp_path, monkeypatch, {"a.txt": 700, "b.txt": 700})
    (tmp_path / "r.yaml").write_text(
        "# gptune pretrain r.yaml\nname: tiny\n"
        "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
        "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
        "train: {max_steps: 24, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, warmup: 2,\n"
        "        eval_every: 12, save_every: 8, keep_last: 3, log_every: 4}\n"
    )
    return tmp_path


def events(run, kind):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in x]


def test_pretrain_learns_and_writes_a_complete_run_folder(books):
    assert run_cli("pretrain", "r.yaml") == 0
    run = books / "runs" / "tiny"
    assert {p.name for p in run.iterdir()} >= {"recipe.yaml", "metrics.jsonl", "final", "tokenizer", "latest",
                                               "curves.png"}
    assert sorted(p.name for p in run.glob("step-*")) == ["step-000008", "step-000016", "step-000024"]
    assert (run / "latest").read_text().strip() == "step-000024"
    train = events(run, "train")
    assert [e["step"] for e in train] == [4, 8, 12, 16, 20, 24]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5  # it learns
    assert train[-1]["tokens"] == 24 * 8 * 32
    ev = events(run, "eval")
    assert ev[-1]["final"] and ev[-1]["val_ppl"] < 400 * 0.5  # far below a uniform guess over 400 tokens
    assert not list(run.glob(".tmp-*"))
    # the recipe next to the weights replays the run
    assert "gptune pretrain runs/tiny/recipe.yaml" in (run / "recipe.yaml").read_text()


def test_final_folder_loads_with_auto_classes_and_gives_identical_logits(books):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from gptune.modeling.gpt import LMWithLoss

    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=8") == 0
    final = books / "runs" / "tiny" / "final"
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("The cat sat on the mat.", return_tensors="pt").input_ids
    # the same weights as the last checkpoint's training state
    state = load_file(books / "runs" / "tiny" / "step-000008" / "model.safetensors")
    wrapped = LMWithLoss(AutoModelForCausalLM.from_pretrained(final))
    wrapped.load_state_dict(state, strict=False)
    with torch.no_grad():
        # the same weights; the forward kernels may differ (gptune's fused GELU vs transformers' own): fp32 1e-6
        torch.testing.assert_close(model(ids).logits, wrapped.lm.eval()(ids).logits, rtol=1e-6, atol=1e-6)
    out = pipeline("text-generation", model=model, tokenizer=tok)("The cat", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The cat")


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(books):
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/straight") == 0
    straight = books / "runs" / "straight"
    # "interrupted" after step 16: the run folder as it was then
    half = books / "runs" / "half"
    shutil.copytree(straight, half)
    shutil.rmtree(half / "final")
    shutil.rmtree(half / "step-000024")
    (half / "latest").write_text("step-000016\n")
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/half", "--resume", "auto") == 0
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(half / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    la = [e["loss"] for e in events(straight, "train")]
    lb = [e["loss"] for e in events(half, "train")]
    assert la == pytest.approx(lb, abs=1e-6)  # stale events past step 16 were dropped, then re-logged


def test_a_run_with_save_every_0_ends_with_a_checkpoint_and_can_be_extended(books):
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=8", "--set", "train.save_every=0") == 0
    run = books / "runs" / "tiny"
    assert sorted(p.name for p in run.glob("step-*")) == ["step-000008"]
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=12", "--set", "train.save_every=0",
                   "--resume", "auto") == 0
    assert [e["step"] for e in events(run, "train")] == [4, 8, 12]
    assert (run / "latest").read_text().strip() == "step-000012"
    # the finished cosine run sits at its floor; extended, it stays there (the lr is continuous)
    assert [e["lr"] for e in events(run, "train")][1:] == pytest.approx([3e-4, 3e-4], rel=1e-6)


def test_raising_max_steps_on_resume_keeps_the_lr_continuous(books):
    """The rule (train.max_steps doc): warmup keeps its steps; the decay is re-planned from the lr at the
    resume step to the floor at the new total. Expected values computed here from that rule."""
    import math

    peak, floor = 3e-3, 0.1
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=16", "--set", "train.log_every=1") == 0
    first = {e["step"]: e["lr"] for e in events(books / "runs" / "tiny", "train")}

    def cosine(s, start, end, top):  # factor going from `top` at `start` to `floor` at `end`
        return floor + (top - floor) * 0.5 * (1 + math.cos(math.pi * (s - start) / (end - start)))

    f8 = cosine(8, 2, 16, 1.0)  # warmup 2 steps, then cosine to step 16
    assert first[8] == pytest.approx(peak * f8, rel=1e-6)
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=24", "--set", "train.log_every=1",
                   "--resume", "runs/tiny/step-000008") == 0
    lr = {e["step"]: e["lr"] for e in events(books / "runs" / "tiny", "train")}
    assert sorted(lr) == list(range(1, 25)) and lr[8] == first[8]
    assert [lr[s] for s in range(9, 25)] == pytest.approx([peak * cosine(s, 8, 24, f8) for s in range(9, 25)],
                                                          rel=1e-6)
    # re-stretching the first plan over 24 steps (the old behaviour) would have jumped up at step 9
    assert lr[9] < lr[8] < peak * cosine(9, 2, 24, 1.0)


def test_resume_with_another_process_count_is_refused_in_one_line(books, capsys):
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=8") == 0
    state = books / "runs" / "tiny" / "step-000008" / "trainer_state.json"
    saved = json.loads(state.read_text())
    assert saved["processes"] == 1
    state.write_text(json.dumps({**saved, "processes": 2}))  # as a 2-process run writes it
    capsys.readouterr()
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=12", "--resume", "auto") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 process(es) and this run has 1" in err[0]
    assert "--num-processes 2" in err[0]


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(books, capsys):
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=4") == 0
    capsys.readouterr()
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=4") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli("pretrain", "r.yaml", "--out-dir", "runs/new", "--resume", "auto") == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=4", "--overwrite") == 0


def test_resume_refuses_a_different_recipe(books, capsys):
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=8") == 0
    capsys.readouterr()
    assert run_cli("pretrain", "r.yaml", "--set", "train.lr=1e-2", "--resume", "auto") == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "train.lr" in err


def test_generate_is_seeded(books, capsys):
    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=8") == 0
    capsys.readouterr()
    args = ["generate", "--model", "runs/tiny/final", "--prompt", "The king", "--max-new-tokens", "8"]
    assert run_cli(*args, "--seed", "3") == 0
    first = capsys.readouterr().out
    assert run_cli(*args, "--seed", "3") == 0
    assert capsys.readouterr().out == first and first.startswith("The king")


def test_help_lists_commands_without_importing_torch():
    out = subprocess.run([sys.executable, "-m", "gptune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout
    # heavy imports live inside commands, so --help stays fast (benchmarks/ times it)
    loaded = subprocess.run([sys.executable, "-c", "import sys, gptune.cli; print(' '.join(sys.modules))"],
                            capture_output=True, text=True).stdout.split()
    assert "torch" not in loaded and "transformers" not in loaded


def test_missing_books_offline_read_the_embedded_corpus_and_say_so(books, capsys, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    code = run_cli("pretrain", "r.yaml", "--set", "data.path=data/books", "--set", "data.download_books=true",
                   "--set", "train.max_steps=1", "--set", "data.max_tokens=20000", "--set", "data.val_fraction=0.05")
    out = capsys.readouterr()
    assert code == 0, out.err
    first = out.out.strip().splitlines()[0]
    assert "data embedded" in first and "data/books is missing and the hub cannot be reached" in first
    assert not (books / "data" / "books").exists()  # nothing downloaded, no partial folder left behind


def test_tensorboard_tracker_logs_into_the_run_folder(books):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert run_cli("pretrain", "r.yaml", "--set", "train.max_steps=8", "--set", "train.tracker=tensorboard") == 0
    files = list((books / "runs" / "tiny" / "logs").rglob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [4, 8]

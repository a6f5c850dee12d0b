"""gptune eval --ppl through the CLI: defaults chained from the newest run, explicit data, JSON, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from conftest import guide_loop, make_text, make_workdir, run_cli


@pytest.fixture()
def pretrained(tmp_path, monkeypatch):
    make_workdir(tmp_path, monkeypatch, {"a.txt": 800})
    (tmp_path / "r.yaml").write_text(
        "# gptune pretrain r.yaml\nname: tiny\n"
        "model: {tokenizer: train, vocab_size: 400, config: {n_layer: 2, n_head: 2, n_embd: 32, n_positions: 64, dropout: 0.0}}\n"
        "data: {path: books, block_size: 32, val_fraction: 0.05, num_proc: 1}\n"
        "train: {max_steps: 16, micro_batch_size: 4, global_batch_size: 8, lr: 3e-3, save_every: 0, eval_every: 0}\n")
    assert run_cli("pretrain", "r.yaml") == 0
    (tmp_path / "held.txt").write_text(make_text(60, 9))
    return tmp_path


def test_bare_eval_ppl_uses_the_newest_run_and_its_validation_split(pretrained, capsys):
    capsys.readouterr()
    assert run_cli("eval", "--ppl", "--json", "out.json") == 0
    out = capsys.readouterr().out
    first = out.strip().splitlines()[0]
    assert "runs/tiny/final" in first and "validation split of books" in first
    report = json.loads((pretrained / "out.json").read_text())
    assert {"perplexity", "nll", "bits_per_byte", "word_perplexity", "tokens", "max_length", "stride"} <= set(report)
    assert report["max_length"] == 64 and report["stride"] == 32  # the model's context, half of it
    # the number is the model's own loss over the guide's windows on that validation text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptune.runners.perplexity import run_validation_text

    final = pretrained / "runs" / "tiny" / "final"
    model, tok = AutoModelForCausalLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final)
    text, _ = run_validation_text(yaml.safe_load((final / "recipe.yaml").read_text()), tok)
    nll_sum, tokens = guide_loop(model, torch.tensor(tok(text)["input_ids"]), 64, 32)
    assert report["tokens"] == tokens
    assert report["perplexity"] == pytest.approx(math.exp(nll_sum / tokens), rel=1e-5)


def test_explicit_data_and_windowing(pretrained, capsys):
    assert run_cli("eval", "--ppl", "--model", "runs/tiny/final", "--data", "held.txt", "--max-length", "32",
                   "--stride", "32", "--json", "disjoint.json") == 0
    assert run_cli("eval", "--ppl", "--model", "runs/tiny/final", "--data", "held.txt", "--max-length", "32",
                   "--stride", "8", "--json", "overlap.json") == 0
    disjoint = json.loads((pretrained / "disjoint.json").read_text())
    overlap = json.loads((pretrained / "overlap.json").read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = pretrained / "runs" / "tiny" / "final"
    model, tok = AutoModelForCausalLM.from_pretrained(final).eval(), AutoTokenizer.from_pretrained(final)
    ids = torch.tensor(tok((pretrained / "held.txt").read_text())["input_ids"])
    for report, stride in ((disjoint, 32), (overlap, 8)):  # the model's own loss over the guide's windows
        nll_sum, tokens = guide_loop(model, ids, 32, stride)
        assert report["tokens"] == tokens and report["nll"] == pytest.approx(nll_sum / tokens, rel=1e-5)
    # overlapping windows score every token after the first; disjoint chunks cannot score a chunk's first token
    assert overlap["tokens"] == disjoint["tokens"] + disjoint["windows"] - 1
    assert overlap["nll"] < disjoint["nll"]  # more context per token


@pytest.mark.parametrize("args,words", [
    (["--stride", "100", "--max-length", "32"], "stride 100 must be <= max_length 32"),
    (["--max-length", "128"], "exceeds the model context"),
    (["--data", "missing.txt"], "no such file"),
])
def test_bad_windowing_and_data_are_one_line(pretrained, capsys, args, words):
    capsys.readouterr()
    assert run_cli("eval", "--ppl", "--model", "runs/tiny/final", *args) == 2
    assert words in capsys.readouterr().err


def test_no_run_here_says_to_pass_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("eval", "--ppl") == 2
    assert "pass --model" in capsys.readouterr().err


def test_eval_ppl_in_bf16_is_within_a_per_mille_of_fp32s_nll(pretrained, capsys):
    # the same weights scored twice; bf16 autocast rounds every matmul input to 8 mantissa bits
    from accelerate.state import AcceleratorState

    assert run_cli("eval", "--ppl", "--data", "held.txt", "--json", "fp32.json") == 0
    capsys.readouterr()
    AcceleratorState._reset_state(True)  # one process per command in real use
    assert run_cli("eval", "--ppl", "--data", "held.txt", "--json", "bf16.json", "--precision", "bf16") == 0
    err = capsys.readouterr().err
    assert "--precision bf16 on the CPU" in err and "use fp32" in err  # GPTUNE_NATIVE_BF16=0 (conftest)
    fp32, bf16 = (json.loads((pretrained / f"{p}.json").read_text()) for p in ("fp32", "bf16"))
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert fp32["tokens"] == bf16["tokens"]
    rel = abs(bf16["nll"] - fp32["nll"]) / fp32["nll"]
    print(f"nll fp32 {fp32['nll']:.6f} bf16 {bf16['nll']:.6f} relative {rel:.2e}")
    assert 0 < rel < 1e-3  # bf16 really ran; the stated bound (run_ppl_eval, --precision); measured 2.6e-5
    AcceleratorState._reset_state(True)

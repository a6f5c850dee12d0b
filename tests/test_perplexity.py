"""Sliding-window perplexity: exact against brute force and the HF guide loop, on tiny seeded models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
)

from conftest import guide_loop
from gptune.data.eval_text import encode_text, join_documents, load_eval_text
from gptune.errors import GptuneError
from gptune.evaluation import perplexity as ppl
from gptune.evaluation.perplexity import (
    NllResult,
    perplexity_report,
    plan_windows,
    resolve_windowing,
    sliding_window_nll,
)

N_POSITIONS = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 threads and lose a lot when other jobs share the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def ids(tokenizer, tiny_text):
    """301 tokens: not a multiple of any stride used below."""
    out = encode_text(tokenizer, tiny_text)[:301]
    assert out.numel() == 301
    return out


def tiny_gpt2(vocab_size: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=N_POSITIONS)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    return tiny_gpt2(len(tokenizer))


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(("max_length", "stride"), [(64, 32), (48, 20), (32, 32), (17, 5)])
def test_equals_brute_force_per_token(gpt2, ids, max_length, stride):
    """Each token t >= 1 scored alone, in float64, with exactly the context its window gives it."""
    ids = ids[:161]  # one forward per token: keep it short
    reference = tiny_gpt2(gpt2.config.vocab_size).double()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in plan_windows(ids.numel(), max_length, stride):
            for t in range(w.score_begin, w.end):
                logits = reference(ids[None, w.begin : t]).logits[0, -1]  # context begin..t-1 predicts t
                nll -= torch.log_softmax(logits, -1)[ids[t]].item()
                count += 1
    result = sliding_window_nll(gpt2, ids, max_length=max_length, stride=stride, batch_size=3)
    assert result.tokens == count
    assert rel(result.nll_sum, nll) < 1e-6


@pytest.mark.parametrize(("max_length", "stride"), [(64, 32), (64, 24), (50, 17), (64, 64), (40, 1)])
def test_equals_hf_guide_loop(gpt2, ids, max_length, stride):
    nll, tokens = guide_loop(gpt2, ids, max_length, stride)
    result = sliding_window_nll(gpt2, ids, max_length=max_length, stride=stride)
    assert result.tokens == tokens
    assert rel(result.nll_sum, nll) < 1e-6
    assert rel(result.perplexity, math.exp(nll / tokens)) < 1e-6


def test_stride_equal_to_max_length_is_disjoint_chunks(gpt2, ids):
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for chunk in ids.split(32):
            if chunk.numel() > 1:  # a 1-token chunk has nothing to condition on
                nll += gpt2(chunk[None], labels=chunk[None]).loss.item() * (chunk.numel() - 1)
                tokens += chunk.numel() - 1
    result = sliding_window_nll(gpt2, ids, max_length=32, stride=32)
    assert (result.tokens, result.windows) == (tokens, 10)
    assert rel(result.nll_sum, nll) < 1e-6


def test_batch_size_does_not_change_the_result(gpt2, ids):
    one = sliding_window_nll(gpt2, ids, max_length=48, stride=16, batch_size=1)
    four = sliding_window_nll(gpt2, ids, max_length=48, stride=16, batch_size=4)
    assert (one.tokens, one.windows) == (four.tokens, four.windows) == (300, 17)
    assert rel(four.nll_sum, one.nll_sum) < 1e-6


def test_row_chunks_of_the_shared_cross_entropy_kernel(gpt2, ids, monkeypatch):
    """Perplexity runs on the training loss's kernel (losses.py): many small row chunks give the one-chunk result."""
    import gptune.losses as losses

    whole = sliding_window_nll(gpt2, ids, max_length=64, stride=32)
    monkeypatch.setattr(losses, "_chunk_rows", lambda vocab: 7)
    chunked = sliding_window_nll(gpt2, ids, max_length=64, stride=32)
    assert rel(chunked.nll_sum, whole.nll_sum) < 1e-6


def test_openai_gpt(tokenizer, ids):
    torch.manual_seed(0)
    config = OpenAIGPTConfig(
        n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=N_POSITIONS
    )
    model = OpenAIGPTLMHeadModel(config).eval()
    nll, tokens = guide_loop(model, ids, 64, 24)
    result = sliding_window_nll(model, ids, max_length=64, stride=24)
    assert result.tokens == tokens
    assert rel(result.nll_sum, nll) < 1e-6


def test_unknown_architecture_falls_back_to_full_logits(gpt2, ids):
    class SomeOtherLM(GPT2LMHeadModel):  # not in the head-split table
        pass

    other = SomeOtherLM(gpt2.config).eval()
    other.load_state_dict(gpt2.state_dict())
    assert not ppl._Scorer(other).split
    result = sliding_window_nll(other, ids, max_length=64, stride=24, batch_size=2)
    reference = sliding_window_nll(gpt2, ids, max_length=64, stride=24)
    assert rel(result.nll_sum, reference.nll_sum) < 1e-6


def test_peft_lora_model_scores_with_its_adapters(gpt2, ids):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = tiny_gpt2(gpt2.config.vocab_size)
    # init_lora_weights=False: random B, so the adapters change the output and must be applied
    config = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    model = get_peft_model(base, config).eval()
    assert ppl._Scorer(model).split
    nll, _ = guide_loop(model, ids, 64, 32)
    result = sliding_window_nll(model, ids, max_length=64, stride=32)
    assert rel(result.nll_sum, nll) < 1e-6
    assert rel(result.nll_sum, sliding_window_nll(gpt2, ids, max_length=64, stride=32).nll_sum) > 1e-4


def test_processes_split_windows_and_sum_exactly(gpt2, ids):
    """Two ranks with a fake accelerator: the per-rank sums add up to the 1-process result."""
    whole = sliding_window_nll(gpt2, ids, max_length=48, stride=16)
    partials = []
    for rank in range(2):
        fake = SimpleNamespace(
            process_index=rank,
            num_processes=2,
            unwrap_model=lambda m: m,
            reduce=lambda t, reduction: partials.append(t.clone()) or t,
        )
        sliding_window_nll(gpt2, ids, max_length=48, stride=16, accelerator=fake)
    nll_sum, tokens, windows = torch.stack(partials).sum(0).tolist()
    assert (int(tokens), int(windows)) == (whole.tokens, whole.windows)
    assert rel(nll_sum, whole.nll_sum) < 1e-9


def test_plan_scores_every_token_after_the_first_once():
    for n in (2, 3, 10, 64, 65, 301):
        for max_length, stride in ((2, 1), (8, 3), (8, 8), (64, 32), (7, 6)):
            windows = plan_windows(n, max_length, stride)
            scored = [t for w in windows for t in range(w.score_begin, w.end)]
            assert len(scored) == len(set(scored))
            assert windows[-1].end == n and all(w.length <= max_length for w in windows)
            if stride < max_length:
                assert sorted(scored) == list(range(1, n))


def test_progress_and_training_mode(gpt2, ids):
    done = []
    gpt2.train()
    try:
        result = sliding_window_nll(gpt2, ids, max_length=64, stride=32, batch_size=4, progress=done.append)
        assert gpt2.training  # restored
    finally:
        gpt2.eval()
    assert sum(done) == result.windows == 9 and done == [4, 4, 1]
    assert result.seconds > 0 and (result.max_length, result.stride) == (64, 32)


# ------------------------------------------------------------------------------------------- report


def test_report_formulas_on_a_hand_computed_case():
    result = NllResult(nll_sum=10 * math.log(2), tokens=5, windows=1, seconds=2.0, max_length=8, stride=4)
    report = perplexity_report(result, "ab cd\né")  # 8 utf-8 bytes ("é" is 2), 3 words
    assert report["bytes"] == 8 and report["words"] == 3
    assert report["perplexity"] == pytest.approx(4.0)  # exp(2 ln 2)
    assert report["nll"] == pytest.approx(2 * math.log(2))
    assert report["bits_per_byte"] == pytest.approx(10 / 8)
    assert report["word_perplexity"] == pytest.approx(2 ** (10 / 3))
    assert report["tokens_per_second"] == pytest.approx(2.5)
    assert {k: report[k] for k in ("tokens", "windows", "max_length", "stride")} == {
        "tokens": 5,
        "windows": 1,
        "max_length": 8,
        "stride": 4,
    }


# ------------------------------------------------------------------------------------------- text


def test_join_documents_like_the_guide():
    assert join_documents(["a", "", "b"]) == "a\n\n\n\nb"


def test_load_eval_text_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text", encoding="utf-8")
    assert load_eval_text(str(tmp_path)) == "first\n\nsecond"
    assert load_eval_text(str(tmp_path / "a.txt")) == "first"


def test_load_eval_text_from_the_hub(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": ["x", "y"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_eval_text("wikitext:wikitext-2-raw-v1:test") == "x\n\ny"
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test")]


# ------------------------------------------------------------------------------------------- errors


def test_hub_failure_names_the_spec_and_the_local_way(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(GptuneError, match=r"'wikitext:wikitext-2-raw-v1:test'.*pass a local file"):
        load_eval_text("wikitext:wikitext-2-raw-v1:test")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.txt", "no such file"),
        (lambda d: d, "no .txt files"),
        (lambda d: (d / "e.txt").write_text("  \n") and d / "e.txt", "text is empty"),
    ],
)
def test_load_eval_text_errors(tmp_path, setup, message):
    with pytest.raises(GptuneError, match=message):
        load_eval_text(str(setup(tmp_path)))


@pytest.mark.parametrize(
    ("max_length", "stride", "message"),
    [
        (64, 0, "stride must be > 0, got 0"),
        (64, -3, "stride must be > 0"),
        (32, 33, "stride 33 must be <= max_length 32"),
        (65, 8, r"max_length 65 exceeds the model context \(n_positions=64\)"),
        (1, 1, "max_length must be >= 2"),
    ],
)
def test_windowing_errors(gpt2, ids, max_length, stride, message):
    with pytest.raises(GptuneError, match=message) as err:
        sliding_window_nll(gpt2, ids, max_length=max_length, stride=stride)
    assert "\n" not in str(err.value)


def test_resolve_windowing_defaults_and_all_problems_at_once(gpt2):
    assert resolve_windowing(gpt2.config) == (64, 32)
    assert resolve_windowing(gpt2.config, 40) == (40, 20)
    with pytest.raises(GptuneError) as err:
        resolve_windowing(gpt2.config, 100, 0)
    assert len(err.value.problems) == 2


def test_text_errors(gpt2, tokenizer):
    with pytest.raises(GptuneError, match="fewer than 2 tokens|at least 2 tokens"):
        sliding_window_nll(gpt2, torch.tensor([5]), max_length=64, stride=32)
    with pytest.raises(GptuneError, match="1-D"):
        sliding_window_nll(gpt2, torch.zeros(2, 5, dtype=torch.long), max_length=64, stride=32)
    with pytest.raises(GptuneError, match="batch_size"):
        sliding_window_nll(gpt2, torch.arange(5), max_length=64, stride=32, batch_size=0)
    with pytest.raises(GptuneError, match="empty"):
        encode_text(tokenizer, "")
    result = NllResult(nll_sum=1.0, tokens=1, windows=1, seconds=1.0, max_length=8, stride=4)
    with pytest.raises(GptuneError, match="empty"):
        perplexity_report(result, "")


# ------------------------------------------------------------------------------------------- distributed

_TWO_PROCESS_SCRIPT = """
import json, sys, torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel
from gptune.evaluation.perplexity import sliding_window_nll

accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.num_processes
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).eval()
ids = torch.randint(0, 97, (301,), generator=torch.Generator().manual_seed(0))
model = accelerator.prepare(model)
r = sliding_window_nll(model, ids, max_length=48, stride=16, batch_size=4, accelerator=accelerator)
if accelerator.is_main_process:
    json.dump({"nll_sum": r.nll_sum, "tokens": r.tokens, "windows": r.windows}, open(sys.argv[1], "w"))
accelerator.wait_for_everyone()
# torn down before exit: left to interpreter exit, gloo's threads can abort a rank ("terminate called
# without an active exception"), as gptune's own runners avoid in training.run.finish
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_two_accelerate_processes_equal_one(tmp_path):
    """Two real CPU processes (gloo, launched by torchrun; `accelerate launch --cpu` would start only
    one): the same sums as one process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    from gptune.distributed import free_port

    # a free port, not torchrun's default 29500: a process left from an earlier test may still hold it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port())]
    subprocess.run([*cmd, str(script), str(out)], check=True, env=env, timeout=300)
    two = json.loads(out.read_text())

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 97, (301,), generator=torch.Generator().manual_seed(0))
    one = sliding_window_nll(model, ids, max_length=48, stride=16)
    assert (two["tokens"], two["windows"]) == (one.tokens, one.windows) == (300, 17)
    assert rel(two["nll_sum"], one.nll_sum) < 1e-9

"""Shared tiny fixtures: a byte-level BPE tokenizer and some text, built in process (no network, no ../shared)."""

from __future__ import annotations

import os
import random

import pytest

# train.mixed_precision: auto picks bf16 on a device with native bf16; the suite's numbers are fp32 on every
# machine (tests of the bf16 branch set it back, tests/test_precision.py). Processes the tests launch inherit it.
os.environ["GPTUNE_NATIVE_BF16"] = "0"

WORDS = (
    "the a cat dog sat on mat ran to house big small red blue and was is it he she they "
    "saw old man woman king queen castle river tree sun moon night day walked said good bad"
).split()


def make_text(n_sentences: int, seed: int = 0) -> str:
    """Deterministic English-like text with enough structure for a tiny LM to learn."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        n = rng.randint(4, 12)
        words = [rng.choice(WORDS) for _ in range(n)]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines) + "\n"


def build_tiny_tokenizer(out_dir, vocab_size: int = 320):
    """A GPT-2 style byte-level BPE tokenizer trained on `make_text`, saved with save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(make_text(2000).splitlines(), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    hf.save_pretrained(str(out_dir))
    return str(out_dir)


def build_llama_tokenizer(out_dir, vocab_size: int = 400):
    """A Llama-style tokenizer (SentencePiece-like BPE: ``▁`` word marks, byte fallback, <unk> <s> </s>,
    BOS added) trained on `make_text`, saved as a ``LlamaTokenizer``: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(make_text(2000).splitlines(), trainer)
    LlamaTokenizer(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(out_dir), add_bos_token=True).save_pretrained(str(out_dir))
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_llama_tokenizer_dir(tmp_path_factory):
    """Folder of a tiny Llama-style tokenizer (400 entries, ids 0-2: <unk> <s> </s>, BOS added)."""
    return build_llama_tokenizer(tmp_path_factory.mktemp("llama-tok"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Folder of a tiny byte-level BPE tokenizer (about 320 entries) that AutoTokenizer loads."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_text():
    return make_text(600)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on 2 shared cores thread hand-offs make each
    small op ~100x slower when another process is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random 2-layer GPT-2 (n_embd 32) saved with save_pretrained, tokenizer beside it."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def run_cli(*args) -> int:
    """Run the real entry point in process; the exit code it would give."""
    from gptune.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_cli_captured(capsys, *args) -> tuple[int, str, str]:
    """``run_cli`` with what it printed: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run_cli(*args)
    out = capsys.readouterr()
    return code, out.out, out.err


def make_workdir(root, monkeypatch, books: dict[str, int]):
    """chdir into ``root`` with a private cache, no progress bars, and ``books/<name>`` of make_text(n, i)."""
    monkeypatch.setenv("GPTUNE_NO_PROGRESS", "1")
    monkeypatch.setenv("GPTUNE_CACHE", str(root / "cache"))
    monkeypatch.chdir(root)
    (root / "books").mkdir(exist_ok=True)
    for i, (name, n) in enumerate(books.items(), start=1):
        (root / "books" / name).write_text(make_text(n, i))
    return root


def accelerate_launch(root, config, *args, timeout: int = 600):
    """``accelerate launch --config_file CONFIG --num_processes 2 -m gptune ARGS`` in ``root`` (fp32); must succeed."""
    import os
    import subprocess
    import sys

    from gptune.distributed import free_port

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(free_port()), "-m", "gptune", *args]
    out = subprocess.run(cmd, cwd=root, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def train_events(run, kind="train"):
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in x]


def finetune_args(model_dir, glue_dir, out_dir, mode):
    """A 4-step SST-2 fine-tune of a tiny model, every dropout off (so processes can match one exactly)."""
    sets = ["train.micro_batch_size=4", "train.global_batch_size=8", "task.max_length=40", "train.log_every=1",
            "train.save_every=0", "model.config.dropout=0.0", "task.clf_dropout=0.0", "train.max_steps=4",
            "lora.dropout=0.0"]
    return ["finetune", "--task", "sst2", f"--{mode}", "--model", str(model_dir), "--data-dir", str(glue_dir),
            "--out-dir", str(out_dir), *(x for s in sets for x in ("--set", s))]


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory):
    """glue_data/SST-2 with a learnable rule ('good' -> 1, 'bad' -> 0): 96 train, 24 dev rows."""
    root = tmp_path_factory.mktemp("glue_small")
    write_sst2(root / "SST-2", random.Random(0))
    return root


GLUE_WORDS = "the a cat dog sat on mat ran to house big small red blue saw old man woman king tree".split()


def glue_sentence(rng, word):
    """A few random words with ``word`` somewhere among them (what makes the fixture tasks learnable)."""
    words = [rng.choice(GLUE_WORDS) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def write_sst2(sst, rng) -> None:
    """SST-2 train (96) and dev (24) TSVs with a learnable rule: 'good' -> 1, 'bad' -> 0."""
    sst.mkdir()
    for name, n in (("train", 96), ("dev", 24)):
        rows = [(glue_sentence(rng, w), str(int(w == "good"))) for w in ["good", "bad"] * (n // 2)]
        (sst / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    """glue_data layout: SST-2 (learnable: 'good' -> 1, 'bad' -> 0, with a test split) and RTE."""
    root = tmp_path_factory.mktemp("glue_data")
    rng = random.Random(0)
    sst = root / "SST-2"
    write_sst2(sst, rng)
    (sst / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{glue_sentence(rng, 'good')}\n" for i in range(10)))
    rte = root / "RTE"
    rte.mkdir()
    for name, n in (("train", 32), ("dev", 12)):
        lines = [f"{i}\t{glue_sentence(rng, 'cat')}\t{glue_sentence(rng, 'dog')}\t{rng.choice(['entailment', 'not_entailment'])}"
                 for i in range(n)]
        (rte / f"{name}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "\n".join(lines) + "\n")
    return str(root)


def finetune_recipe(model, data_dir, *, task="sst2", lora=True, sets=()):
    """A fast fine-tuning recipe on the fixture data (no dropout, tiny batches, no periodic checkpoint)."""
    from gptune.recipes import build_recipe, read_recipe_file
    from gptune.runners.finetune import DEFAULT_RECIPE

    base = ["train.micro_batch_size=8", "train.global_batch_size=16", "task.max_length=40", "train.log_every=1",
            "train.save_every=0", "model.config.dropout=0.0", "task.clf_dropout=0.0"]
    return build_recipe(read_recipe_file(DEFAULT_RECIPE),
                        {"task.name": task, "model.name_or_path": model, "task.data_dir": data_dir,
                         "lora.enabled": lora}, [*base, *sets])


def guide_loop(model, input_ids, max_length: int, stride: int) -> tuple[float, int]:
    """(summed NLL, tokens scored): the Hugging Face guide "Perplexity of fixed-length models" loop
    (batch 1, the model's own loss), counting the labels the loss averaged over after the shift: an
    independent reference for gptune's sliding-window scorer."""
    import torch

    encodings = input_ids[None]
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        window = encodings[:, begin_loc:end_loc]
        target_ids = window.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(window, labels=target_ids).loss
        num_loss_tokens = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


FAMILIES = ["gpt2", "openai-gpt", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "llama", "qwen2"]
"""Every family of ``gptune.modeling.families``, each as a tiny random model (``family_model_dir``)."""

FAMILY_EXTRA = {"llama": {"num_key_value_heads": 2}, "qwen2": {"num_key_value_heads": 2},
                "opt": {"word_embed_proj_dim": 16}, "gpt_neo": {"window_size": 8}}
"""Family keys of the tiny models: grouped-query attention, OPT's project_in/project_out, a local window
shorter than the sequences."""


def build_family_model(family: str, out_dir, tokenizer_dir) -> str:
    """A tiny random ``family`` model by gptune's own random init (2 layers, 32 wide, 4 heads, context 64,
    no dropout), saved with save_pretrained, its tokenizer beside it."""
    import torch

    from gptune.modeling.gpt import build_causal_lm
    from gptune.recipes import build_recipe
    from gptune.tokenization import load_tokenizer

    recipe = build_recipe({"model": {"arch": family, "tokenizer": str(tokenizer_dir), "config": {
        "n_layer": 2, "n_head": 4, "n_embd": 32, "n_positions": 64, "dropout": 0.0,
        "extra": FAMILY_EXTRA.get(family, {})}}, "train": {"max_steps": 1}})
    tokenizer = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    build_causal_lm(recipe.model, tokenizer).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return str(out_dir)


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_llama_tokenizer_dir):
    """``family_model_dir(family)``: the folder of that family's tiny model (built once per session); Llama's
    with the Llama-style tokenizer, the others with the byte-level BPE."""
    built = {}

    def get(family: str) -> str:
        if family not in built:
            tok = tiny_llama_tokenizer_dir if family == "llama" else tiny_tokenizer_dir
            built[family] = build_family_model(family, tmp_path_factory.mktemp(f"tiny-{family}"), tok)
        return built[family]

    return get

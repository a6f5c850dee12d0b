"""Shared tiny fixtures: a byte-level BPE tokenizer and some text, built in process (no network, no ../shared)."""

from __future__ import annotations

import random

import pytest

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


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Folder of a tiny byte-level BPE tokenizer (about 320 entries) that AutoTokenizer loads."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_text():
    return make_text(600)

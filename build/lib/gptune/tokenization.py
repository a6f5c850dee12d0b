"""Load or train the tokenizer of a run, and fingerprint it.

Every tokenizer returned here has an EOS token (documents are separated by it when packing) and a
pad token. The pad token is set to EOS when absent: padded positions are always masked (attention
mask 0, label -100), so which id fills them never changes a loss or a prediction, and reusing EOS
avoids growing the vocabulary (and the embedding matrix) for a token that is never learned.

No torch import at module level: `gptune --help` imports this module and must stay fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gptune.errors import GptuneError, first_line

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
"""GPT-2's document separator; also added to tokenizers that have no EOS (GPT-1's openai-gpt)."""

TRAIN = "train"
"""`model.tokenizer` value that trains a byte-level BPE on the run's training files."""

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def load_tokenizer(
    spec: str,
    *,
    run_dir: Path | None = None,
    train_texts: Callable[[], Iterable[list[str]]] | None = None,
    vocab_size: int = 16384,
    trust_remote_code: bool = False,
    field: str = "model.tokenizer",
) -> Any:
    """Return the tokenizer named by `spec` (a local folder, a hub id, or ``"train"``), with EOS and pad.

    ``"train"`` reuses ``run_dir/"tokenizer"`` when it exists (a resumed or repeated run never
    retrains); otherwise it trains a GPT-2 style byte-level BPE on the batches of text that
    ``train_texts()`` yields and saves it there. `field` is the recipe key or flag named in errors.
    """
    if spec == TRAIN:
        if run_dir is None:
            raise GptuneError("model.tokenizer=train needs a run folder to save the trained tokenizer in")
        folder = Path(run_dir) / "tokenizer"
        if not folder.is_dir():
            if train_texts is None:
                raise GptuneError("model.tokenizer=train: no training text to train the tokenizer on")
            train_tokenizer(train_texts(), folder, vocab_size=vocab_size)
        tokenizer = _from_pretrained(str(folder), trust_remote_code=trust_remote_code, field=field)
    else:
        tokenizer = _from_pretrained(spec, trust_remote_code=trust_remote_code, field=field)
    return ensure_special_tokens(tokenizer)


def _from_pretrained(spec: str, *, trust_remote_code: bool, field: str) -> Any:
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GptuneError(f"{field}: {spec} is a file; pass the folder that holds tokenizer.json")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a bad folder
            raise GptuneError(
                f"{field}: {spec} is not a tokenizer folder (expected tokenizer.json or "
                f"tokenizer_config.json from save_pretrained): {first_line(e)}"
            ) from e
        if len(tokenizer) < 2:
            raise GptuneError(f"{field}: {spec} loaded an empty vocabulary")
        return tokenizer
    if not _HUB_ID.match(spec):
        raise GptuneError(f"{field}: no such folder: {spec}")
    try:
        return AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise GptuneError(
            f"{field}: could not load {spec!r} from the Hugging Face hub ({first_line(e)}); "
            "pass a local tokenizer folder (--set model.tokenizer=DIR) or train one with model.tokenizer=train"
        ) from e


def ensure_special_tokens(tokenizer: Any) -> Any:
    """Give `tokenizer` an EOS (adding ``<|endoftext|>`` when it has none) and a pad token (= EOS).

    Adding EOS grows ``len(tokenizer)`` by one; the model builder resizes embeddings to match.
    """
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS})
        logger.warning(
            "tokenizer had no EOS token: added %s as a special token (id %d); the model's embeddings "
            "must be resized to %d rows",
            EOS,
            tokenizer.eos_token_id,
            len(tokenizer),
        )
    if tokenizer.pad_token is None:
        # Padding is always masked out, so reusing EOS costs nothing and adds no new embedding row.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_tokenizer(batches: Iterable[list[str]], out_dir: Path, *, vocab_size: int) -> Path:
    """Train a GPT-2 style byte-level BPE on `batches` of text and save it (save_pretrained) to `out_dir`.

    The folder appears atomically: it is written to a temporary sibling and renamed into place, so
    an interrupted run never leaves a half tokenizer that the next run would reuse.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from gptune.console import make_byte_progress

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        # All 256 byte symbols: any text can be encoded, nothing maps to unk.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with make_byte_progress() as bar:
        task = bar.add_task("tokenizer: reading text", total=None, info="")

        def counted() -> Iterator[list[str]]:
            for batch in batches:
                bar.advance(task, sum(len(t) for t in batch))
                yield batch
            bar.update(task, description="tokenizer: merging")

        tok.train_from_iterator(counted(), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    hf.pad_token = EOS

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        hf.save_pretrained(str(tmp))
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("trained a byte-level BPE tokenizer (%d tokens) -> %s", len(hf), out_dir)
    return out_dir


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of what decides token ids: vocabulary, merges, normalisation, special tokens.

    Padding/truncation state is left out: it changes with how the tokenizer was last called,
    not with which ids it produces.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if backend.padding is not None or backend.truncation is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())  # a copy: the caller's settings stay
            backend.no_padding()
            backend.no_truncation()
        # The serialisation itself (not a re-dumped JSON): 10x faster on a 50k vocabulary, and
        # deterministic for a given tokenizers version.
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    h.update(str(len(tokenizer)).encode())
    return h.hexdigest()[:16]

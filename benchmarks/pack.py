"""Tokenize + pack ~20 MB of text with 2 workers: gptune's ``build_lm_data`` vs run_clm.py's data path
(``load_dataset("text")`` -> ``map(tokenize_function, num_proc=2)`` -> ``map(group_texts, num_proc=2)``),
both cold (fresh caches each run), alternating; then gptune again on its own cache (a second run).

    python benchmarks/pack.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Stat, data_root, print_table, row, write_json  # noqa: E402

BLOCK = 256


def make_corpus(root: Path, work: Path, target_bytes: int) -> tuple[Path, int]:
    """Gutenberg books (UTF-8; the Latin-1 ones converted), repeated under new names up to ``target_bytes``."""
    out = work / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    books = sorted((root / "books" / "gutenberg").glob("*.txt"))
    texts = []
    for f in books:
        raw = f.read_bytes()
        try:
            texts.append((f.stem, raw.decode("utf-8")))
        except UnicodeDecodeError:
            texts.append((f.stem, raw.decode("latin-1")))
    size, copy = 0, 0
    while size < target_bytes:
        for stem, text in texts:
            data = text.encode("utf-8")
            (out / f"{copy:02d}-{stem}.txt").write_bytes(data)
            size += len(data)
            if size >= target_bytes:
                break
        copy += 1
    return out, size


def run_gptune(corpus: Path, tokenizer, cache: Path) -> float:
    from gptune.data.text import build_lm_data

    t = time.perf_counter()
    data = build_lm_data(str(corpus), tokenizer, BLOCK, val_fraction=0.0, num_proc=2, cache_dir=cache, progress=False)
    assert len(data.train) > 0
    return time.perf_counter() - t


def run_clm(corpus: Path, tokenizer, cache: Path) -> float:
    """run_clm.py lines 'tokenize_function' and 'group_texts', with a cache folder of its own."""
    from datasets import load_dataset

    t = time.perf_counter()
    files = sorted(str(p) for p in corpus.glob("*.txt"))
    raw = load_dataset("text", data_files={"train": files}, keep_linebreaks=True, cache_dir=str(cache))

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=2, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // BLOCK) * BLOCK
        result = {k: [t[i : i + BLOCK] for i in range(0, total_length, BLOCK)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True, num_proc=2)
    assert len(lm["train"]) > 0
    return time.perf_counter() - t


def run(*, quick: bool, data: str | None = None, out_dir: Path | None = None) -> list[dict]:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    root = data_root(data)
    work = Path(tempfile.mkdtemp(prefix="gptune-bench-pack-"))
    target = 8_000_000 if quick else 20_000_000
    rounds = 2 if quick else 3
    try:
        corpus, size = make_corpus(root, work, target)
        tok = AutoTokenizer.from_pretrained(str(root / "tokenizers" / "gpt2-hf"))
        ours, peer, cached = [], [], []
        for r in range(rounds):
            order = [("peer", run_clm), ("ours", run_gptune)]
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                cache = work / f"cache-{name}-{r}"
                secs = fn(corpus, tok, cache)
                (ours if name == "ours" else peer).append(secs)
                if name == "ours":
                    cached.append(run_gptune(corpus, tok, cache))  # second run: same corpus, same cache
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = size / 1e6
    cold = Stat([mb / s for s in ours])
    rows = [
        row("tokenize + pack", f"MB/s, {mb:.0f} MB, 2 workers, cold", cold, Stat([mb / s for s in peer]),
            "run_clm map + group_texts", target=">= 1.5x", digits=2),
        row("tokenize + pack", "second run: seconds (cache hit)", Stat(cached), Stat(ours), "gptune first run",
            target="<= 0.05x", higher_is_better=False, digits=3),
    ]
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--data", default=None)
    a = p.parse_args(argv)
    rows = run(quick=not a.full, data=a.data)
    print_table(rows, "tokenize + pack")
    print("json:", write_json("pack", {"rows": rows}))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()

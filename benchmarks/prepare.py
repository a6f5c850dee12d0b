"""`gptune prepare` vs run_clm.py's data path, side by side: peak memory and MB/s at two corpus sizes.

The corpus is the Gutenberg books of ``$GPTUNE_DATA/books/gutenberg`` (or ``--data``), Latin-1 ones
converted to UTF-8, repeated under new names in a seeded shuffled order up to each size, written under
``--work`` (default: a temporary folder; never the repository). Each contender runs in its own process
(``--child``), cold (fresh cache), GPT-2's tokenizer, 2 workers, blocks of 256; the parent samples the
memory of the whole process tree (main + workers) every 0.2 s: PSS (shared pages counted once), and the
plain RSS sum in the JSON. Contenders alternate within a
size (gptune first in odd rounds), so a busy patch of the shared machine hits both.

    python benchmarks/prepare.py --sizes 100,1000 --peer-sizes 100 --work /tmp/corpora   # NOTES.md table
    python benchmarks/prepare.py --quick                                                  # 20 MB, both
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

from common import Stat, data_root, print_table, row, run_measured, write_json

BLOCK = 256
WORKERS = 2


def make_corpus(books: Path, out: Path, target_bytes: int, seed: int = 0) -> int:
    """The books, UTF-8, repeated in a shuffled order under new names until ``target_bytes``; reused if present."""
    done = out / ".complete"
    if done.exists():
        return int(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    texts = []
    for f in sorted(books.glob("*.txt")):
        raw = f.read_bytes()
        try:
            texts.append((f.stem, raw.decode("utf-8").encode("utf-8")))
        except UnicodeDecodeError:
            texts.append((f.stem, raw.decode("latin-1").encode("utf-8")))
    if not texts:
        raise SystemExit(f"no .txt books in {books}: set $GPTUNE_DATA or pass --data DIR (with books/gutenberg)")
    rng = random.Random(seed)
    size, copy = 0, 0
    while size < target_bytes:
        order = texts[:]
        rng.shuffle(order)
        for stem, data in order:
            (out / f"{copy:04d}-{stem}.txt").write_bytes(data)
            size += len(data)
            if size >= target_bytes:
                break
        copy += 1
    done.write_text(str(size))
    return size


# ----------------------------------------------------------------------------- contenders (child side)


def child_gptune(corpus: Path, tokenizer_dir: str, cache: Path) -> dict:
    from transformers import AutoTokenizer

    from gptune.config import DataConfig
    from gptune.data.prepare import prepare_lm_data
    from gptune.tokenization import ensure_special_tokens

    tok = ensure_special_tokens(AutoTokenizer.from_pretrained(tokenizer_dir))
    data = DataConfig(path=str(corpus), block_size=BLOCK, val_fraction=0.0, num_proc=WORKERS, cache_dir=str(cache))
    t = time.perf_counter()
    lm = prepare_lm_data(data, tok, seed=0, progress=False)
    return {"seconds": time.perf_counter() - t, "tokens": lm.stats.tokens, "blocks": len(lm.train)}


def child_run_clm(corpus: Path, tokenizer_dir: str, cache: Path) -> dict:
    """run_clm.py's 'tokenize_function' and 'group_texts', with a cache folder of its own."""
    import datasets
    from datasets import load_dataset
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    t = time.perf_counter()
    files = sorted(str(p) for p in corpus.glob("*.txt"))
    raw = load_dataset("text", data_files={"train": files}, keep_linebreaks=True, cache_dir=str(cache))

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=WORKERS, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // BLOCK) * BLOCK
        result = {k: [t[i : i + BLOCK] for i in range(0, total_length, BLOCK)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True, num_proc=WORKERS)
    return {"seconds": time.perf_counter() - t, "blocks": len(lm["train"])}


# ----------------------------------------------------------------------------- parent side


def measure(name: str, corpus: Path, tokenizer_dir: str, cache: Path) -> dict:
    """Run one contender in a child process; its wall time and the peak memory of its process tree."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--corpus", str(corpus),
           "--tokenizer", tokenizer_dir, "--cache", str(cache)]
    return run_measured(cmd, name)


def run(*, quick: bool, data: str | None = None, sizes=None, peer_sizes=None, work: str | None = None,
        rounds: int = 1) -> list[dict]:
    root = data_root(data)
    sizes = sizes or ([20] if quick else [100, 1000])
    peer_sizes = peer_sizes if peer_sizes is not None else sizes
    tokenizer_dir = str(root / "tokenizers" / "gpt2-hf")
    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="gptune-bench-prepare-"))
    rows, raw = [], {}
    try:
        for mb in sizes:
            corpus = base / f"corpus-{mb}MB"
            size = make_corpus(root / "books" / "gutenberg", corpus, mb * 1_000_000)
            names = ["gptune"] + (["run_clm"] if mb in peer_sizes else [])
            got: dict[str, list[dict]] = {n: [] for n in names}
            for r in range(rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    cache = base / f"cache-{name}-{mb}-{r}"
                    shutil.rmtree(cache, ignore_errors=True)
                    res = measure(name, corpus, tokenizer_dir, cache)
                    shutil.rmtree(cache, ignore_errors=True)
                    print(f"{mb} MB {name}: {json.dumps(res)}", flush=True)
                    got[name].append(res)
            raw[mb] = got
            ours = got["gptune"]
            peer = got.get("run_clm")
            rate = Stat([size / 1e6 / x["seconds"] for x in ours])
            rows.append(row("prepare", f"MB/s, {size / 1e6:.0f} MB, {WORKERS} workers, cold", rate,
                            Stat([size / 1e6 / x["seconds"] for x in peer]) if peer else None,
                            "run_clm map(tokenize) + map(group_texts)", target=">= 2x", digits=2,
                            note=f"load avg {sum(x['load_avg'] for x in ours) / len(ours):.1f}"))
            rows.append(row("prepare", f"peak memory (PSS) of the process tree (MB), {size / 1e6:.0f} MB",
                            Stat([x["peak_tree_mb"] for x in ours]),
                            Stat([x["peak_tree_mb"] for x in peer]) if peer else None,
                            "run_clm map(tokenize) + map(group_texts)", target="<= 1500 MB", higher_is_better=False,
                            digits=0))
    finally:
        if not work:
            shutil.rmtree(base, ignore_errors=True)
    write_json("prepare", {"rows": rows, "raw": {str(k): v for k, v in raw.items()}})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 MB, both contenders")
    p.add_argument("--full", action="store_true", help="100 MB and 1 GB, both contenders")
    p.add_argument("--data", default=None, help="data root with books/gutenberg and tokenizers/gpt2-hf "
                                                "(default $GPTUNE_DATA)")
    p.add_argument("--sizes", default=None, help="corpus sizes in MB, comma-separated (e.g. 100,1000)")
    p.add_argument("--peer-sizes", default=None, help="sizes at which run_clm also runs (default: all)")
    p.add_argument("--work", default=None, help="folder for the corpora and caches (kept; default: a temp folder)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        fn = {"gptune": child_gptune, "run_clm": child_run_clm}[a.child]
        print(json.dumps(fn(Path(a.corpus), a.tokenizer, Path(a.cache))))
        return
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else None
    peers = [int(x) for x in a.peer_sizes.split(",")] if a.peer_sizes else None
    rows = run(quick=not a.full and not a.sizes, data=a.data, sizes=sizes, peer_sizes=peers, work=a.work,
               rounds=a.rounds)
    print_table(rows, "prepare")


if __name__ == "__main__":
    main()

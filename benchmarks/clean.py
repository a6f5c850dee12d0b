"""`gptune prepare` with ``data.clean`` on vs off, side by side: the cleaning report, MB/s, peak memory.

The corpus (JSONL files of 8 MB, written under ``--work``, never the repository): the WikiText-2 articles of
``$GPTUNE_DATA/wikitext-2`` (test + valid: the train split is not in the shared data) and the shared books
(``books/gutenberg``, ``books/tinyshakespeare``; Latin-1 ones decoded as such) cut into documents of
``CHUNK_PARAS`` paragraphs, then **planted**: 10% duplicates (half exact copies with their case and spacing
changed, half near copies with 2% of their words replaced; each right after its original) and 5% of the
documents turned into HTML pages with navigation, sidebar, cookie banner and footer around their text.
Bigger sizes (``--sizes 100,1000``) add documents of ``CHUNK_PARAS`` paragraphs drawn at random from all
paragraphs (a seeded mix: distinct documents, as in a crawl), then plant the same 10% / 5%.

Each configuration runs cold (fresh cache) in its own child process, GPT-2's tokenizer, 2 workers; the
parent samples the PSS of the whole process tree every 0.2 s (``common.run_measured``). "on" and "off"
alternate within a size, so a busy patch of the shared machine hits both. ``--index-docs N`` also fills a
near-dedup index with N random MinHash signatures and prints its memory (the table) and disk (signatures).

    python benchmarks/clean.py --sizes 0,100 --index-docs 1000000 --work /tmp/clean-bench    # docs/data.md
    (size 0: the base corpus alone, with the fate of every planted document)
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import data_root, markdown_table, run_measured

HERE = Path(__file__).resolve().parent

BLOCK = 256
WORKERS = 2
CHUNK_PARAS = 40
SHARD_BYTES = 8 << 20
DUP_FRACTION, HTML_FRACTION = 0.10, 0.05
CLEAN = {  # the Gopher thresholds (Rae et al. 2021, appendix A); line punctuation off: the books are hard-wrapped
    "strip_html": True, "fix_unicode": True, "min_chars": 200, "languages": ["en"], "dedup": "near",
    "min_mean_word_length": 3, "max_mean_word_length": 10, "max_symbol_ratio": 0.1,
    "min_alpha_word_fraction": 0.8, "max_repeated_lines": 0.3, "max_top_2gram_fraction": 0.2,
    "max_dup_5gram_fraction": 0.15, "min_stop_words": 2,
}
PAGE = ('<!DOCTYPE html><html><head><title>{title} | Wiki</title><script>window.ads=[1,2,3];</script>'
        '<style>body{{font:14px serif}}</style></head><body><header><nav><ul><li><a href="/">Home</a></li>'
        '<li><a href="/random">Random page</a></li><li><a href="/login">Log in</a></li></ul></nav></header>'
        '<div class="sidebar"><h3>Popular</h3><ul><li><a href="/a">Top ten</a></li><li><a href="/b">Recent'
        '</a></li></ul></div><main><article><h1>{title}</h1>{body}</article></main><footer><p>Copyright 2024.'
        ' All rights reserved.</p><a href="/privacy">Privacy policy</a><div class="cookie">We use cookies. '
        'Accept all</div></footer></body></html>')


# ----------------------------------------------------------------------------- the corpus


def paragraphs_of(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def base_documents(root: Path) -> list[str]:
    """WikiText-2 articles, and the books cut into documents of CHUNK_PARAS paragraphs."""
    docs = []
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        f = root / "wikitext-2" / name
        if f.is_file():  # a line " = Title = " starts an article (" = = Section = = " does not)
            docs += [p.strip() for p in re.split(r"\n(?= = [^=].* = \n)", f.read_text("utf-8")) if p.strip()]
    books = sorted((root / "books" / "gutenberg").glob("*.txt")) + [root / "books" / "tinyshakespeare" / "input.txt"]
    for f in books:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        paras = paragraphs_of(text)
        docs += ["\n\n".join(paras[i : i + CHUNK_PARAS]) for i in range(0, len(paras), CHUNK_PARAS)]
    return docs


def mixed_documents(pool: list[str], target_bytes: int, rng: random.Random) -> list[str]:
    """Documents of CHUNK_PARAS paragraphs drawn at random from `pool` until `target_bytes`."""
    out, size = [], 0
    while size < target_bytes:
        d = "\n\n".join(rng.choices(pool, k=CHUNK_PARAS))
        out.append(d)
        size += len(d.encode())
    return out


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
        words[i] = rng.choice(["alpha", "omega", "delta"])
    return " ".join(words)


def exact_copy(text: str) -> str:
    return "  " + text.upper().replace("\n", "\n\n") + "\n"  # the same after NFKC, case folding, spaces


def as_page(text: str, i: int) -> str:
    body = "".join(f"<p>{p.replace('&', '&amp;').replace('<', '&lt;')}</p>" for p in paragraphs_of(text))
    return PAGE.format(title=f"Page {i}", body=body)


def plant(docs: list[str], rng: random.Random) -> tuple[list[str], dict[str, list[int]]]:
    """5% of `docs` turned into HTML pages, then 10% duplicates inserted after their originals; the new
    positions of each kind (``html``, ``exact``, ``near``; ``near_of``: the original of each near copy)."""
    docs = list(docs)
    pages = set(rng.sample(range(len(docs)), round(HTML_FRACTION * len(docs))))
    for i in pages:
        docs[i] = as_page(docs[i], i)
    dups: dict[int, str] = {}
    for k, i in enumerate(rng.sample(range(len(docs)), round(DUP_FRACTION * len(docs)))):
        dups[i] = "exact" if k % 2 == 0 else "near"
    out, where = [], {"html": [], "exact": [], "near": [], "near_of": []}
    for i, d in enumerate(docs):
        if i in pages:
            where["html"].append(len(out))
        out.append(d)
        if i in dups:
            where[dups[i]].append(len(out))
            if dups[i] == "near":
                where["near_of"].append(len(out) - 1)
            out.append(exact_copy(d) if dups[i] == "exact" else near_copy(d, rng))
    return out, where


def make_corpus(root: Path, out: Path, mb: int, seed: int = 0) -> tuple[int, int]:
    """The JSONL corpus for `mb` MB (0: the base corpus alone) in `out`/corpus/, files of about SHARD_BYTES;
    (bytes of text, documents). Reused if present."""
    done = out / ".complete"
    if done.exists():
        return tuple(json.loads(done.read_text()))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(seed)
    docs = base_documents(root)
    base_bytes = sum(len(d.encode()) for d in docs)
    if mb * 1_000_000 > base_bytes:
        pool = [p for d in docs for p in paragraphs_of(d)]
        docs += mixed_documents(pool, mb * 1_000_000 - base_bytes, rng)
    docs, where = plant(docs, rng)
    (out / "corpus").mkdir()
    shard, size = 0, SHARD_BYTES
    for d in docs:
        if size >= SHARD_BYTES:  # a .jsonl file is read whole (gptune.data.sources): crawls come in shards
            fh = (out / "corpus" / f"part-{shard:05d}.jsonl").open("w", encoding="utf-8")
            shard, size = shard + 1, 0
        line = json.dumps({"text": d}) + "\n"
        fh.write(line)
        size += len(line)
    fh.close()
    (out / "planted.json").write_text(json.dumps(where))
    res = (sum(len(d.encode()) for d in docs), len(docs))
    done.write_text(json.dumps(res))
    return res


# ----------------------------------------------------------------------------- child side


def child(corpus: Path, tokenizer_dir: str, cache: Path, clean: bool) -> dict:
    from transformers import AutoTokenizer

    from gptune.config import CleanConfig, DataConfig
    from gptune.data.prepare import prepare_lm_data
    from gptune.tokenization import ensure_special_tokens

    tok = ensure_special_tokens(AutoTokenizer.from_pretrained(tokenizer_dir))
    data = DataConfig(path=str(corpus), block_size=BLOCK, val_fraction=0.0, num_proc=WORKERS, cache_dir=str(cache),
                      clean=CleanConfig(**CLEAN) if clean else CleanConfig())
    t = time.perf_counter()
    lm = prepare_lm_data(data, tok, seed=0, progress=False)
    seconds = time.perf_counter() - t
    report = lm.folder / "clean_report.json"
    return {"seconds": seconds, "tokens": lm.stats.tokens,
            "report": json.loads(report.read_text()) if report.is_file() else None}


def child_recall(corpus: Path, cache: Path) -> dict:
    """Every document's verdict (the same rules, one process): what became of the planted duplicates and
    pages, and how many other documents the dedup rule dropped (false positives)."""
    from gptune.config import CleanConfig
    from gptune.data.clean import clean_stream, shingle_hashes
    from gptune.data.dedup import DedupIndex
    from gptune.data.sources import open_source

    cfg = CleanConfig(**CLEAN)
    planted = json.loads((corpus.parent / "planted.json").read_text())
    near_of = dict(zip(planted.pop("near"), planted.pop("near_of"), strict=True))
    texts = list(open_source(str(corpus), "data.path").documents())
    # the true Jaccard similarity of each near copy's word 5-gram set with its original's (the sets MinHash sees)
    jac = {}
    for i, o in near_of.items():
        a, b = (set(shingle_hashes(t, cfg.ngram).tolist()) for t in (texts[i], texts[o]))
        jac[i] = len(a & b) / len(a | b)
    where = {k: set(v) for k, v in planted.items()}
    where["near, Jaccard >= 0.8"] = {i for i, j in jac.items() if j >= cfg.near_threshold}
    where["near, Jaccard < 0.8"] = {i for i, j in jac.items() if j < cfg.near_threshold}
    index = DedupIndex(cache / "dedup.sig", "near", num_perm=cfg.num_perm, threshold=cfg.near_threshold)
    fate: dict[str, dict[str, int]] = {k: {} for k in (*where, "other")}
    for i, _, v in clean_stream(enumerate(texts), cfg, num_proc=WORKERS, index=index):
        kind = next((k for k, s in where.items() if i in s), "other")
        what = v.rule or ("kept, " + "+".join(v.changed) if v.changed else "kept")
        fate[kind][what] = fate[kind].get(what, 0) + 1
    index.close()
    return {"fate": fate, "near_jaccard": sorted(round(j, 3) for j in jac.values())}


def index_memory(n: int) -> dict:
    """A near-dedup index (the default threshold 0.8, 128 permutations) filled with `n` distinct signatures."""
    import numpy as np

    from gptune.data.dedup import DedupIndex

    with tempfile.TemporaryDirectory() as d:
        idx = DedupIndex(Path(d) / "dedup.sig", "near")
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for start in range(0, n, 10_000):
            for i, s in enumerate(rng.integers(0, 2**32, size=(min(10_000, n - start), 128), dtype=np.uint32)):
                idx.check(start + i, s)
        out = {"documents": n, "bands": idx.b, "rows": idx.r, "table_mb": idx.table.nbytes / 1e6,
               "disk_mb": (Path(d) / "dedup.sig").stat().st_size / 1e6, "seconds": time.perf_counter() - t}
        idx.close()
    return out


# ----------------------------------------------------------------------------- parent side


def report_table(rep: dict) -> str:
    rows = [["in", f"{rep['documents_in']:,}", f"{rep['bytes_in'] / 1e6:.2f}", ""]]
    for rule, e in rep["dropped"].items():
        ex = " / ".join(f"#{x['document']}" + (f" ({x['value']})" if "value" in x else "") + f" {x['text'][:50]!r}"
                        for x in e["examples"])
        rows.append([f"dropped: {rule}", f"{e['documents']:,}", f"{e['bytes'] / 1e6:.2f}", ex])
    rows.append(["kept", f"{rep['kept']:,}", f"{rep['bytes_kept'] / 1e6:.2f}",
                 f"changed: {json.dumps(rep['changed'])}"])
    return markdown_table(["", "documents", "MB", "examples (document, value, start)"], rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="data root (default $GPTUNE_DATA)")
    p.add_argument("--sizes", default="0", help="corpus sizes in MB, comma-separated; 0: the base corpus alone")
    p.add_argument("--work", default=None, help="folder for the corpora and caches (kept; default: a temp folder)")
    p.add_argument("--index-docs", type=int, default=0, help="also measure a near-dedup index of this many documents")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    root = data_root(a.data)
    tokenizer_dir = str(root / "tokenizers" / "gpt2-hf")
    if a.child == "recall":
        print(json.dumps(child_recall(Path(a.corpus), Path(a.cache))))
        return
    if a.child:
        print(json.dumps(child(Path(a.corpus), tokenizer_dir, Path(a.cache), a.child == "on")))
        return
    base = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gptune-bench-clean-"))
    rows = []
    try:
        for r, mb in enumerate(int(x) for x in a.sizes.split(",")):
            corpus = base / f"corpus-{mb}MB"
            size, ndocs = make_corpus(root, corpus, mb)
            got = {}
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                cache = base / f"cache-{mode}-{mb}"
                shutil.rmtree(cache, ignore_errors=True)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--corpus",
                       str(corpus / "corpus"), "--cache", str(cache)] + (["--data", a.data] if a.data else [])
                got[mode] = run_measured(cmd, f"clean {mode}, {mb} MB")
                shutil.rmtree(cache, ignore_errors=True)
                print(f"{size / 1e6:.1f} MB, clean {mode}: {got[mode]['seconds']:.1f} s, "
                      f"peak {got[mode]['peak_tree_mb']:.0f} MB, load {got[mode]['load_avg']:.1f}", flush=True)
            print(f"\n{size / 1e6:.1f} MB, {ndocs:,} documents: data.clean report\n{report_table(got['on']['report'])}\n")
            if mb == 0:  # the base corpus: what became of each planted document
                cache = base / "cache-recall"
                cache.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "recall", "--corpus",
                       str(corpus / "corpus"), "--cache", str(cache)] + (["--data", a.data] if a.data else [])
                res = run_measured(cmd, "recall")
                shutil.rmtree(cache, ignore_errors=True)
                print(markdown_table(["planted", "what became of them"],
                                     [[k, ", ".join(f"{w}: {n:,}" for w, n in sorted(v.items()))]
                                      for k, v in res["fate"].items()]))
                print(f"near copies' true Jaccard with their original: {res['near_jaccard']}")
            for mode in ("off", "on"):
                g = got[mode]
                rows.append([f"{size / 1e6:.1f}", f"{ndocs:,}", mode, f"{g['seconds']:.1f}",
                             f"{size / 1e6 / g['seconds']:.2f}", f"{g['peak_tree_mb']:.0f}",
                             f"{g['peak_tree_rss_mb']:.0f}", f"{g['load_avg']:.1f}"])
    finally:
        if not a.work:
            shutil.rmtree(base, ignore_errors=True)
    print(markdown_table(["MB in", "documents", "data.clean", "seconds", "MB/s", "peak PSS MB", "peak RSS MB",
                          "load avg"], rows))
    if a.index_docs:
        print(json.dumps(index_memory(a.index_docs)))


if __name__ == "__main__":
    main()

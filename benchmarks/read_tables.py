"""Peak memory of reading one big table file of pretraining text (``Source.documents()``, the reader
``gptune prepare`` uses), per format: .jsonl, .csv, .parquet. Each read runs in its own process, with
its memory after importing gptune and pyarrow beside it.

The figure is the child's peak resident memory (``VmHWM``, which exec resets, unlike ``ru_maxrss``).
The corpus is the Gutenberg books of ``$GPTUNE_DATA/books/gutenberg`` (or ``--data``), cut into rows of
``--row-kb`` KB, repeated (each row numbered, so no two are equal) up to ``--mb`` MB, written under ``--work`` (default: a temporary folder).
The .parquet file has row groups of about 32 MB of text (pyarrow decodes a row group's column
whole, so a reader's memory follows the row group, not the file). To compare with another checkout, run the script with ``PYTHONPATH=OTHER_CHECKOUT``.

    python benchmarks/read_tables.py --mb 100 [--row-kb 200] [--formats jsonl,csv,parquet]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import data_root


def write_tables(books: Path, out: Path, mb: int, row_kb: int, formats: list[str]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    texts = []
    for f in sorted(books.glob("*.txt")):
        raw = f.read_bytes()
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(raw.decode("latin-1"))
    if not texts:
        raise SystemExit(f"no .txt books in {books}: set $GPTUNE_DATA or pass --data DIR")
    rows, size, step = [], 0, row_kb * 1000
    while size < mb * 1_000_000:
        for t in texts:
            for i in range(0, len(t), step):
                rows.append(f"{len(rows)}: {t[i : i + step]}")  # unique rows, as in a real corpus
                size += len(rows[-1])
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        path = paths[fmt] = out / f"corpus-{mb}MB-{row_kb}KB.{fmt}"
        if path.exists():
            continue
        if fmt == "jsonl":
            path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
        elif fmt == "csv":
            pcsv.write_csv(pa.table({"text": rows}), path)
        else:
            pq.write_table(pa.table({"text": rows}), path, row_group_size=max(1, 32_000 // row_kb))  # ~32 MB groups
    return paths


def peak_mb() -> float:
    """This process's peak resident memory so far (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def child(path: str) -> None:
    import pyarrow.csv  # noqa: F401  (the readers' libraries count as the baseline, not as the read)
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import gptune.data.sources as sources

    base = peak_mb()
    t = time.perf_counter()
    docs = chars = 0
    for d in sources.open_source(path).documents():
        docs += 1
        chars += len(d)
    print(json.dumps({"documents": docs, "chars": chars, "seconds": time.perf_counter() - t,
                      "max_rss_mb": peak_mb(), "base_mb": base,
                      "gptune": sources.__file__}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--row-kb", type=int, default=200, help="characters per row, in thousands")
    p.add_argument("--formats", default="jsonl,csv,parquet")
    p.add_argument("--data", default=None, help="data root with books/gutenberg (default $GPTUNE_DATA)")
    p.add_argument("--work", default=None, help="folder for the table files (kept; default: a temp folder)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child)
        return
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gptune-bench-tables-"))
    paths = write_tables(data_root(a.data) / "books" / "gutenberg", work, a.mb, a.row_kb, a.formats.split(","))
    print("| format | file MB | documents | seconds | peak RSS (MB) | of it, interpreter + imports (MB) |")
    print("|---|---|---|---|---|---|")
    source = "-"
    for fmt, path in paths.items():
        res = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True)
        if res.returncode:
            print(f"| {fmt} | {path.stat().st_size / 1e6:.0f} | failed: {res.stderr.strip().splitlines()[-1]} | | | |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        source = r["gptune"]
        print(f"| {fmt} | {path.stat().st_size / 1e6:.0f} | {r['documents']} | {r['seconds']:.1f} | "
              f"{r['max_rss_mb']:.0f} | {r['base_mb']:.0f} |")
    print(f"gptune read from: {source}")


if __name__ == "__main__":
    main()

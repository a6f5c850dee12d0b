"""The corpus-wide dedup state of one preparation: does a document's signature duplicate an earlier one?

It lives in the main process and sees the documents in corpus order (the worker processes only compute
signatures, ``gptune.data.clean``), so the first of a set of duplicates is kept whatever ``data.num_proc``.

* ``exact``: the signature is a 64-bit hash of the normalised text; a document whose hash was seen is a
  duplicate.
* ``near``: the signature is a MinHash of ``num_perm`` values, cut into ``b`` bands of ``r`` rows (datasketch's
  choice of ``b, r`` for the threshold, weighted toward recall: ``LSH_WEIGHTS``). A kept document that
  shares a band with the new one is a candidate; the new one is a duplicate when a candidate's estimated
  Jaccard similarity (the fraction of equal MinHash values) is at least the threshold.

Memory: one open-addressing table (``BandTable``: a uint64 key and a uint32 slot per band of each kept
document, at most half full, doubled when it fills) holds ``b`` keys per kept document: 24-48 bytes per band,
so 0.34-0.67 GB per million kept documents for ``near`` at the default threshold 0.8 (b=14), 24-48 MB for
``exact`` (b=1); ``benchmarks/clean.py --index-docs`` measures it. The
kept documents' records (document index + signature) are appended to ``dedup.sig`` in the preparation
folder, on disk, not in memory; candidates are read back from it. An interrupted preparation cuts the file
back to the state it resumes from and rebuilds the table from it; a published preparation does not keep it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
LSH_WEIGHTS = (0.1, 0.9)
"""datasketch's weights of false positives and false negatives when it picks the bands: a false positive (a
candidate under the threshold) costs one read, since every candidate's similarity is checked; a false negative
is a duplicate kept. At 0.8 and 128 permutations: 14 bands of 9 rows (the equal weights' 9 of 13 make a
document at Jaccard 0.85 a candidate with probability 0.69; these, 0.97)."""
_REBUILD_CHUNK = 1 << 16


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class BandTable:
    """uint64 key -> uint32 slot (the first kept document with that key), linear probing, numpy-backed."""

    def __init__(self, capacity: int = 1 << 12):
        self.keys = np.zeros(capacity, dtype=np.uint64)  # 0: empty
        self.slots = np.zeros(capacity, dtype=np.uint32)
        self.size = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.slots.nbytes

    def _find(self, key: int) -> int:
        mask = len(self.keys) - 1
        i = key & mask
        keys = self.keys
        while True:
            k = int(keys[i])
            if k == 0 or k == key:
                return i
            i = (i + 1) & mask

    def get(self, key: int) -> int | None:
        i = self._find(key or 1)
        return int(self.slots[i]) if self.keys[i] else None

    def put(self, key: int, slot: int) -> None:
        """Record `slot` under `key` unless the key is taken (the earliest document keeps it)."""
        key = key or 1
        i = self._find(key)
        if self.keys[i]:
            return
        self.keys[i], self.slots[i] = key, slot
        self.size += 1
        if 2 * self.size > len(self.keys):
            self._grow()

    def _grow(self) -> None:
        old_keys, old_slots = self.keys, self.slots
        self.keys = np.zeros(2 * len(old_keys), dtype=np.uint64)
        self.slots = np.zeros(2 * len(old_keys), dtype=np.uint32)
        for k, s in zip(old_keys[old_keys != 0].tolist(), old_slots[old_keys != 0].tolist(), strict=True):
            i = self._find(k)
            self.keys[i], self.slots[i] = k, s


class DedupIndex:
    """The kept documents' signatures; ``check`` says whether a new one duplicates one (else keeps it)."""

    def __init__(self, path: Path, mode: str, *, num_perm: int = 128, threshold: float = 0.8, kept: int = 0):
        self.mode, self.threshold = mode, threshold
        if mode == "near":
            from datasketch import MinHashLSH

            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
            self.b, self.r, width = lsh.b, lsh.r, num_perm
        else:
            self.b, self.r, width = 1, 2, 2
        self.record = 2 + width  # uint32: document index (2) + signature
        self._mult = _mix(np.arange(1, self.r + 1, dtype=np.uint64) * _GOLDEN) | np.uint64(1)
        self.table = BandTable()
        self.kept = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, kept * self.record * 4)  # records past the resumed state are not part of it
        self._rebuild(kept)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, b) uint64 keys of the bands of `sigs` (n, width): a hash of each band's r values and its index."""
        bands = sigs[:, : self.b * self.r].astype(np.uint64).reshape(len(sigs), self.b, self.r)
        h = (bands * self._mult).sum(axis=2, dtype=np.uint64)  # wrapping sum: a polynomial hash of the band
        return _mix(h + np.arange(self.b, dtype=np.uint64) * _GOLDEN)

    def _read(self, slot: int) -> np.ndarray:
        data = os.pread(self.fd, self.record * 4, slot * self.record * 4)
        return np.frombuffer(data, dtype=np.uint32)

    def _rebuild(self, kept: int) -> None:
        for start in range(0, kept, _REBUILD_CHUNK):
            n = min(_REBUILD_CHUNK, kept - start)
            data = os.pread(self.fd, n * self.record * 4, start * self.record * 4)
            recs = np.frombuffer(data, dtype=np.uint32).reshape(n, self.record)
            for i, keys in enumerate(self.band_keys(recs[:, 2:]).tolist()):
                for k in keys:
                    self.table.put(k, start + i)
        self.kept = kept

    def check(self, doc: int, sig: np.ndarray) -> tuple[int, float] | None:
        """``(earlier document, similarity)`` when `sig` duplicates a kept document; else keep it: None."""
        keys = self.band_keys(sig[None, :])[0].tolist()
        best = None
        for slot in dict.fromkeys(s for s in map(self.table.get, keys) if s is not None):
            rec = self._read(slot)
            sim = float(np.array_equal(rec[2:], sig)) if self.mode == "exact" else float(np.mean(rec[2:] == sig))
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (int(rec[0]) | int(rec[1]) << 32, sim)
                if sim == 1.0:
                    break
        if best is not None:
            return best
        rec = np.concatenate([np.array([doc & 0xFFFFFFFF, doc >> 32], dtype=np.uint32), sig.astype(np.uint32)])
        os.pwrite(self.fd, rec.tobytes(), self.kept * self.record * 4)
        for k in keys:
            self.table.put(k, self.kept)
        self.kept += 1
        return None

    def close(self) -> None:
        os.close(self.fd)

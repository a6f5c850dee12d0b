"""Token streams on disk: fixed-size shard files written by appending, read back through memory maps.

A stream ``NAME`` is the files ``NAME-00000.bin, NAME-00001.bin, ...`` (raw uint16 when the vocabulary
fits, else uint32; every shard holds ``shard_tokens`` tokens but the last) and ``NAME.idx`` (int64: the
stream offset just past each document's EOS, i.e. the document boundaries). The writer can stop at any
point and ``truncate`` back to the last consistent state, which is how an interrupted preparation
resumes. ``TokenStream.read(start, n)`` gives any slice, across shard boundaries, without reading the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IDX_DTYPE = np.int64


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def shard_path(folder: Path, name: str, k: int) -> Path:
    return folder / f"{name}-{k:05d}.bin"


class StreamWriter:
    """Append ids to the stream `name` in `folder`; ``end_document`` records a document boundary."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, shard_tokens: int, *,
                 tokens: int = 0, documents: int = 0):
        """Continue a stream that has `tokens` tokens and `documents` boundaries (0, 0: a new stream);
        anything written past them (an interrupted run) is cut off."""
        self.folder, self.name, self.dtype, self.shard_tokens = Path(folder), name, np.dtype(dtype), shard_tokens
        self.tokens, self.documents = tokens, documents
        self._truncate()
        self._shard = self._open(tokens // shard_tokens)
        self._idx = open(self.folder / f"{name}.idx", "ab")  # noqa: SIM115 - kept open while writing

    def _truncate(self) -> None:
        k, used = divmod(self.tokens, self.shard_tokens)
        for p in self.folder.glob(f"{self.name}-*.bin"):
            if int(p.stem.rsplit("-", 1)[1]) > k:
                p.unlink()
        last = shard_path(self.folder, self.name, k)
        if last.exists():
            with open(last, "r+b") as fh:
                fh.truncate(used * self.dtype.itemsize)
        idx = self.folder / f"{self.name}.idx"
        if idx.exists():
            with open(idx, "r+b") as fh:
                fh.truncate(self.documents * np.dtype(IDX_DTYPE).itemsize)

    def _open(self, k: int):
        return open(shard_path(self.folder, self.name, k), "ab")  # noqa: SIM115 - closed when full

    def append(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids).astype(self.dtype, copy=False)
        while ids.size:
            room = self.shard_tokens - self.tokens % self.shard_tokens
            self._shard.write(ids[:room].tobytes())
            self.tokens += min(room, ids.size)
            ids = ids[room:]
            if self.tokens % self.shard_tokens == 0:  # shard full: the next one starts
                self._shard.close()
                self._shard = self._open(self.tokens // self.shard_tokens)

    def end_document(self) -> None:
        self._idx.write(np.asarray([self.tokens], dtype=IDX_DTYPE).tobytes())
        self.documents += 1

    def flush(self) -> None:
        self._shard.flush()
        self._idx.flush()

    def close(self) -> None:
        self._shard.close()
        self._idx.close()
        empty = shard_path(self.folder, self.name, self.tokens // self.shard_tokens)
        if self.tokens % self.shard_tokens == 0 and empty.exists() and empty.stat().st_size == 0:
            empty.unlink()  # the shard opened after the last full one never got a token

    @property
    def shards(self) -> int:
        return -(-self.tokens // self.shard_tokens)


class TokenStream:
    """Read-only view of a stream written by `StreamWriter`; shards are memory-mapped on first use."""

    def __init__(self, folder: Path, name: str, dtype: str, shard_tokens: int, tokens: int):
        self.folder, self.name, self.dtype = Path(folder), name, np.dtype(dtype)
        self.shard_tokens, self.tokens = shard_tokens, tokens
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return self.tokens

    def _shard(self, k: int) -> np.memmap:
        if k not in self._maps:
            self._maps[k] = np.memmap(shard_path(self.folder, self.name, k), dtype=self.dtype, mode="r")
        return self._maps[k]

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``start .. start + n`` of the stream (a view when they lie in one shard)."""
        if start < 0 or start + n > self.tokens:
            raise IndexError(f"tokens {start}..{start + n} outside a stream of {self.tokens}")
        parts = [np.zeros(0, dtype=self.dtype)]
        while n > 0:
            k, off = divmod(start, self.shard_tokens)
            take = min(n, self.shard_tokens - off)
            parts.append(self._shard(k)[off : off + take])
            start, n = start + take, n - take
        return parts[-1] if len(parts) <= 2 else np.concatenate(parts[1:])

    def document_ends(self) -> np.ndarray:
        """Stream offsets just past each document's EOS (those inside the stream)."""
        idx = self.folder / f"{self.name}.idx"
        if not idx.exists() or idx.stat().st_size == 0:
            return np.zeros(0, dtype=IDX_DTYPE)
        ends = np.memmap(idx, dtype=IDX_DTYPE, mode="r")
        return np.asarray(ends[: np.searchsorted(ends, self.tokens, side="right")])

    def __getstate__(self) -> dict:  # DataLoader workers map the files again rather than pickling maps
        return {**self.__dict__, "_maps": {}}


class TokenBlocks(torch.utils.data.Dataset):
    """Blocks of `block_size` consecutive tokens of a stream; yields ``{"input_ids": LongTensor}``.

    `blocks` lists which blocks (block i = tokens ``i*T .. (i+1)*T``); None: all whole blocks in order.
    """

    def __init__(self, stream: TokenStream, block_size: int, blocks: np.ndarray | None = None):
        self.stream, self.block_size, self.blocks = stream, block_size, blocks

    def __len__(self) -> int:
        return len(self.stream) // self.block_size if self.blocks is None else len(self.blocks)

    def block_ids(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = i if self.blocks is None else int(self.blocks[i])
        return self.stream.read(b * self.block_size, self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.block_ids(i).astype(np.int64))}

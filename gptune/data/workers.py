"""Worker processes for the data stages (tokenizing, cleaning): ordered results, bounded work in flight.

``ordered_map`` sends each batch of a stream to one of ``num_proc`` processes (forked where possible, so
they inherit what ``init`` sets up instead of unpickling it) and yields the results in input order. At most
``2 * num_proc`` batches are in flight, so memory does not grow with the stream. ``num_proc`` 1 runs in this
process. Breaking off the iteration (or an error) terminates the workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class _Inline:
    """The pool interface, run in this process."""

    def __init__(self, init: Callable | None, initargs: tuple):
        if init is not None:
            init(*initargs)

    def submit(self, fn: Callable, arg: Any):
        result = fn(arg)
        return type("Done", (), {"get": staticmethod(lambda: result)})

    def close(self) -> None:
        pass


class _Pool:
    def __init__(self, init: Callable | None, initargs: tuple, num_proc: int):
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker: num_proc is the knob
        self.pool = multiprocessing.get_context(method).Pool(num_proc, init, initargs)

    def submit(self, fn: Callable, arg: Any):
        return self.pool.apply_async(fn, (arg,))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def ordered_map(fn: Callable[[Any], Any], batches: Iterable[tuple[Any, Any]], *, num_proc: int = 1,
                init: Callable | None = None, initargs: tuple = ()) -> Iterator[tuple[Any, Any]]:
    """``(tag, fn(payload))`` for each ``(tag, payload)`` of `batches`, in order; `fn` runs in the workers
    (a module-level function; `init(*initargs)` runs once in each worker first)."""
    pool = _Pool(init, initargs, num_proc) if num_proc > 1 else _Inline(init, initargs)
    pending: deque = deque()
    try:
        for tag, payload in batches:
            pending.append((tag, pool.submit(fn, payload)))
            while len(pending) > 2 * num_proc:
                tag0, result = pending.popleft()
                yield tag0, result.get()
        while pending:
            tag0, result = pending.popleft()
            yield tag0, result.get()
    finally:
        pool.close()

"""Running calls from several threads at once, for the tests that share one model between threads."""

from __future__ import annotations

import threading
from typing import Any, Callable


def call_from_threads(call: Callable[[int], Any], count: int, threads: int = 4) -> list[Any]:
    """`[call(i) for i in range(count)]`, computed by `threads` threads at once (thread t takes the
    indices t, t + threads, ...); re-raises the first error any thread hit."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(indices: range) -> None:
        try:
            for i in indices:
                results[i] = call(i)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(range(t, count, threads),)) for t in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    return results

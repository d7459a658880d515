"""One thread for the yardsticks: float sums depend on the thread count, so a judge or evaluator trained on one
thread is the same model on every machine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block; the caller's thread count restored after it, also on errors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

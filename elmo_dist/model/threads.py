"""CPU execution: independent work items on Python threads that share torch's intra-op threads, and
the allocator setting that keeps large freed tensors' pages mapped."""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_kept = False


def run_parallel(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` on min(len(tasks), torch threads) Python threads that pull them in order, each
    thread with an equal share of torch's intra-op threads (torch ops release the GIL).

    Independent threads need no barrier per op, unlike one op spread over OpenMP threads, so a core
    taken by another process slows one worker instead of stalling every op. Grad and inference
    mode are carried into the workers; the first exception is re-raised here.
    """
    n_threads = torch.get_num_threads()
    workers = min(len(tasks), n_threads)
    if workers < 2:
        for task in tasks:
            task()
        return
    grad_mode, inference_mode = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    pending = iter(tasks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        torch.set_num_threads(n_threads // workers)  # this thread's share; restored below
        try:
            with torch.inference_mode(inference_mode), torch.set_grad_enabled(grad_mode):
                while not errors:
                    with lock:
                        task = next(pending, None)
                    if task is None:
                        break
                    task()
        except BaseException as e:  # re-raised in the caller
            errors.append(e)
        finally:
            torch.set_num_threads(n_threads)  # the default for threads created later

    threads = [threading.Thread(target=worker, name=f"elmo-worker-{k}") for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def keep_freed_memory() -> bool:
    """Let glibc serve large tensors from its heap and keep freed pages mapped (process-wide, once).

    By default a block over the mmap threshold is a fresh mapping returned to the system on free, so
    every large tensor a step allocates (a training step: tens of MB of gate activations per layer)
    page-faults on first write: 20-30% of the LSTM layer's time in the training profile on this
    machine, ~10% of the built-in model's inference. With the thresholds raised, the memory of one
    step is reused by the next. Memory is not given back to the system until exit, so only processes
    that just compute call this (the trainer, the job's actors, the `elmo` and `evaluate` commands),
    not the library on import. Returns whether the setting took (False off glibc: nothing changes).
    """
    global _kept
    if _kept:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        ok = False
    _kept = ok
    logger.debug("glibc keeps freed memory: %s", ok)
    return ok

"""Independent work items run on Python threads that share torch's intra-op threads."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch


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

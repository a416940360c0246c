"""Measuring on a shared machine: the peak memory of a process tree, and waiting for quiet."""
from __future__ import annotations

import multiprocessing
import os
import time

import psutil


def _sample_peak(root_pid: int, interval_s: float, peak, stop) -> None:
    """Keep in ``peak`` the largest total PSS seen of ``root_pid`` and its descendants."""
    root, me = psutil.Process(root_pid), os.getpid()
    while not stop.is_set():
        total = 0
        for process in [root, *root.children(recursive=True)]:
            if process.pid == me:
                continue
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                pass
        peak.value = max(peak.value, total)
        stop.wait(interval_s)


class PeakMemory:
    """Samples the memory of this process and all its descendants, keeps the peak.

    Counts each process's proportional set size (PSS), so that pages shared between Ray's
    workers (the object store, PyTorch's libraries) are counted once, not once per process.
    Samples from a separate process: reading every process's memory map takes CPU and,
    in a thread here, the GIL that Ray Data's scheduler (which runs in this process) needs.
    """

    def __init__(self, interval_s: float = 0.5):
        context = multiprocessing.get_context("fork")
        self._peak = context.Value("q", 0)
        self._stop = context.Event()
        self._process = context.Process(target=_sample_peak, daemon=True,
                                        args=(os.getpid(), interval_s, self._peak, self._stop))

    @property
    def peak_bytes(self) -> int:
        return self._peak.value

    def __enter__(self) -> PeakMemory:
        self._process.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._process.join()


def settle(busy_percent: float = 15, timeout_s: float = 20) -> None:
    """Wait until the machine is quiet (or ``timeout_s`` passed) before a timed run.

    A pipeline's actors and workers go on exiting, and freeing their memory, after the run
    returns: without this the bare loop right after a pipeline run shared the cores with
    them and measured up to a quarter slower.
    """
    deadline = time.monotonic() + timeout_s
    while psutil.cpu_percent(interval=0.5) > busy_percent and time.monotonic() < deadline:
        pass

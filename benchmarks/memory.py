"""Peak memory added by one step: the RSS high-water mark on CPU, ``max_memory_allocated`` on
CUDA. The method is stated in ``learn_step.py``'s docstring ("Peak memory")."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import re
import threading
import time
from collections.abc import Callable, Iterator

import torch


class _Libc:
    """glibc's ``malloc_trim`` when available (Linux/glibc); a no-op elsewhere."""

    def __init__(self) -> None:
        self.trim: Callable[[int], int] | None = None
        name = ctypes.util.find_library("c")
        with contextlib.suppress(OSError, AttributeError):
            self.trim = ctypes.CDLL(name).malloc_trim if name else None

    def malloc_trim(self) -> None:
        if self.trim is not None:
            self.trim(0)


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.M)
    if m is None:
        raise OSError(f"{field_name} not in /proc/self/status")
    return int(m.group(1))


def _statm_rss_bytes(page: int) -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page


class PeakMemory:
    """Peak memory added by one step, in bytes; see learn_step.py's docstring for the method."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc = _Libc()
        self.method = "none"
        if device.type == "cuda":
            self.method = "cuda max_memory_allocated"
        elif self._can_reset_hwm():
            self.method = "RSS high-water mark (VmHWM after clear_refs=5) minus VmRSS before"
        elif os.path.exists("/proc/self/statm"):
            self.method = "RSS sampled every 0.5 ms from /proc/self/statm, minus RSS before"
        if device.type == "cpu" and self.libc.trim is not None:
            self.method += "; gc.collect + malloc_trim(0) before"

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status_kib("VmHWM")
            return True
        except OSError:
            return False

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[int | None]]:
        """``with pm.measure() as out:`` ... ``out[0]`` is the peak increase (or None)."""
        out: list[int | None] = [None]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            yield out
            torch.cuda.synchronize(self.device)
            out[0] = torch.cuda.max_memory_allocated(self.device) - before
            return
        gc.collect()
        self.libc.malloc_trim()
        if self.method.startswith("RSS high-water"):
            before = _status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            yield out
            out[0] = (_status_kib("VmHWM") - before) * 1024
        elif self.method.startswith("RSS sampled"):
            page = os.sysconf("SC_PAGE_SIZE")
            before = _statm_rss_bytes(page)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], _statm_rss_bytes(page))
                    time.sleep(0.0005)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            try:
                yield out
            finally:
                stop.set()
                th.join()
            out[0] = max(peak[0], _statm_rss_bytes(page)) - before
        else:
            yield out

"""Transparent huge pages for the weights a CPU decode step streams.

A decode step reads every weight once, so on a CPU its MatMuls are bound by how fast memory streams,
and that depends on the pages underneath. ONNX Runtime allocates initializers and prepacked
weights with malloc, which on glibc means 4 KiB pages unless the region is advised for huge pages
(most distributions ship THP in "madvise" mode). Every 4 KiB of weights then costs a TLB miss, and
inside a virtual machine a TLB miss walks two page tables. On the 2-core VM this was written on,
SmolLM2's LM head alone ([1, 576] x [576, 49152], FP32, 2 threads, one process, sessions alternated)
took 28-42 ms on 4 KiB pages and 10-14 ms on 2 MiB pages (2026-11-30, `bench decode --huge-pages`
has the whole-model figures). The first session created in a process was the slowest on 4 KiB pages,
which is what the benchmarks' mirrored creation orders were working around.

So, after ONNX Runtime creates a session, `NewMemory` advises the anonymous regions the session
added (MADV_HUGEPAGE) and asks the kernel to back them with huge pages now (MADV_COLLAPSE, Linux
6.1+; without it khugepaged gets to them in its own time). Only regions that appeared or grew while
the session was created are touched, so other memory of the process is left alone. (Hence what
the session puts in heap memory that was mapped, and freed, before it started stays on 4 KiB pages:
collapsing all of an older region would also make its untouched pages resident. A process loading
its models at start, as a server does, allocates them fresh: 494 of SmolLM2's 513 MB were covered.)

The KV cache stays on ordinary pages: one arena for all layers on 2 MiB pages made the attention
reads at context 2048 slower, not faster, in the runs that could tell (contiguous layers alias in
the caches; numpy's separate allocations do not), and a layer's cache row is under 2 MiB anyway.

Nothing here changes a result: pages hold the same bytes. Where THP is "never", the platform is not
Linux, or a call fails, it does nothing (`report()` says what happened). `huge_pages=False` in
`runtime.load` (or `trtcompile serve --no-huge-pages`) turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import sys
import threading
import time
from dataclasses import dataclass, field

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
COLLAPSE_CHUNK = 32 << 20  # per MADV_COLLAPSE call: a background collapse can stop between calls


def thp_mode() -> str | None:
    """The kernel's THP setting ("always", "madvise", "never"), or None where there is none to read."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def available() -> bool:
    return sys.platform.startswith("linux") and thp_mode() in ("always", "madvise")


_libc = None


def _madvise(address: int, length: int, advice: int) -> int:
    """0, or the errno of a failed madvise (EINVAL for MADV_COLLAPSE: a kernel before 6.1)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    return 0 if _libc.madvise(address, length, advice) == 0 else ctypes.get_errno()


def _aligned_interior(start: int, end: int) -> tuple[int, int]:
    return (start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), end & ~(HUGE_PAGE - 1)


def writable_anonymous_regions() -> dict[int, int]:
    """start -> end of each private, writable mapping with no file behind it (malloc's mmaps, arenas,
    the brk heap), from /proc/self/maps."""
    regions = {}
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return regions
    for line in lines:
        parts = line.split()
        if len(parts) < 5 or not parts[1].startswith("rw") or parts[1][3] != "p":
            continue
        if len(parts) > 5 and parts[5] != "[heap]":  # files, stacks, vdso: not ours to advise
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        regions[start] = end
    return regions


@dataclass
class NewMemory:
    """`with NewMemory() as new: <create a session>` backs what the block allocated with huge pages
    (`enabled=False`: does nothing, and says so in `report()`).

    The advice is given on leaving the block; the kernel's copy into huge pages (MADV_COLLAPSE: 0.1-1.3
    s for SmolLM2's 510 MiB on the VM this was written on, by how fragmented its free memory was, so
    seconds or more for a model of several GB) happens there too, or with `background=True` in a
    daemon thread, 32 MiB per call,
    while the model already serves (its first steps then run partly on 4 KiB pages). `wait()` blocks
    until it is done; `stop()` ends it early (the backend's close does)."""

    enabled: bool = True
    background: bool = False
    advised: int = 0  # bytes advised MADV_HUGEPAGE
    collapsed: int = 0  # bytes the kernel backed with huge pages on request
    seconds: float = 0.0  # time the collapse took (so far, while a background one runs)
    skipped: str | None = None
    collapse_errno: int = 0  # the last MADV_COLLAPSE failure (khugepaged still collapses advised memory)
    _before: dict = field(default_factory=dict, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> "NewMemory":
        if not self.enabled:
            self.skipped = "huge_pages=False"
        elif not available():
            self.skipped = f"transparent huge pages are {thp_mode() or 'not available here'}"
        else:
            self._before = writable_anonymous_regions()
        return self

    def __exit__(self, *exc) -> None:
        if self.skipped is not None or exc[0] is not None:
            self._done.set()
            return
        ranges = []
        for start, end in writable_anonymous_regions().items():
            old_end = self._before.get(start)
            if old_end == end:
                continue
            # A region that grew (the brk heap, an arena) is advised from where it ended before.
            lo, hi = _aligned_interior(start if old_end is None or old_end > end else old_end, end)
            if hi - lo >= HUGE_PAGE and _madvise(lo, hi - lo, MADV_HUGEPAGE) == 0:
                self.advised += hi - lo
                ranges.append((lo, hi))
        if self.background:
            self._thread = threading.Thread(target=self._collapse, args=(ranges,), name="trtcompile-huge-pages",
                                            daemon=True)
            self._thread.start()
        else:
            self._collapse(ranges)

    def _collapse(self, ranges: list[tuple[int, int]]) -> None:
        started = time.perf_counter()
        try:
            for lo, hi in ranges:
                for at in range(lo, hi, COLLAPSE_CHUNK):
                    if self._stopping.is_set():
                        return
                    size = min(COLLAPSE_CHUNK, hi - at)
                    error = _madvise(at, size, MADV_COLLAPSE)  # ctypes lets go of the GIL meanwhile
                    if error == 0:
                        self.collapsed += size
                    else:
                        self.collapse_errno = error
                        if error == errno.EINVAL:  # no MADV_COLLAPSE in this kernel: every call would fail
                            return
                    self.seconds = time.perf_counter() - started
        finally:
            self.seconds = time.perf_counter() - started
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the collapse is over (at once when there was none or it ran in the block)."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def report(self) -> str:
        if self.skipped is not None:
            return f"huge pages: off ({self.skipped})"
        state = "" if self._done.is_set() else ", still collapsing in the background"
        return (f"huge pages: {self.collapsed / 2**20:.0f} MiB of {self.advised / 2**20:.0f} MiB advised "
                f"backed now, {self.seconds:.2f} s{state}")

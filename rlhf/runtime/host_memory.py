"""Keep freed host memory in the process heap, so large CPU tensors reuse pages already mapped.

glibc serves an allocation above its mmap threshold (which it never raises past 32 MiB) with a
fresh `mmap` and returns it to the kernel on `free`. Each such tensor then costs one page fault
per 4 KiB page the first time it is written. A PPO micro-step on a CPU allocates several of that
size and frees them again: the embedding's gradient (vocabulary × width: 113 MB for
SmolLM2, whose LM head shares it; zero-filled by `embedding_dense_backward`), the logits and
their gradient. Profiled on SmolLM2 (experiments/benchmarks.md): the zero-fill of the
embedding gradient alone took 0.21 s a backward, almost all of it page faults.

`host_heap=reuse` (the default) tells glibc to serve every allocation from its heap
(`M_MMAP_MAX = 0`) and not to give freed memory back to the kernel below 1 GiB of free space at
the top (`M_TRIM_THRESHOLD`), so the next micro-step writes into pages an earlier one faulted
in. A heap fragments: torch asks for 64-byte aligned blocks, which need a little more than the
hole a freed block of the same size leaves, so a loop of large tensors can hold several copies
before holes are reused (measured in tests/models/test_host_memory.py). `release_free_memory` hands
the heap's free pages back (`malloc_trim`); the PPO trainer calls it after each update and the
SFT/RM stages after each optimiser step, so memory is reused within a step and the RSS between
steps is live memory. `host_heap=system` leaves glibc's defaults. Not glibc (macOS, musl):
nothing to change, said in the log. CUDA memory has its own caching allocator, not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from rlhf.config import HOST_HEAPS

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}  # malloc/malloc.c

_active = "system"  # the setting in force in this process (a multirun's jobs share one process)


@functools.cache
def _glibc():
    """The C library where it is glibc, else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return libc


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel, where host_heap=reuse keeps them (glibc
    does so itself under its defaults); True if it did. Between steps: the next step's first
    large tensors fault their pages in again, the ones after reuse them."""
    libc = _glibc()
    if libc is None or _active != "reuse":
        return False
    libc.malloc_trim(0)
    return True


def use_host_heap(mode: str) -> str:
    """Apply `host_heap` (reuse or system) to this process; returns what was done, for the log.
    Applying it twice is harmless (a pipeline's stages and a sweep's jobs share one process)."""
    global _active
    if mode not in HOST_HEAPS:
        raise ValueError(f"host_heap must be one of {HOST_HEAPS}, got {mode!r}")
    libc = _glibc()
    if mode == "system":
        if libc is not None and _active == "reuse":
            for parameter, value in GLIBC_DEFAULTS.items():
                libc.mallopt(parameter, value)
        _active = mode
        return "host heap: the C library's defaults (host_heap=system)"
    if libc is None:
        return "host heap: not glibc, nothing to change (host_heap=reuse has no effect here)"
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return "host heap: glibc refused mallopt, its defaults stay"
    _active = mode
    return (
        "host heap: freed memory kept for reuse (glibc: no mmap per large tensor, so no page "
        "faults each step; host_heap=system for the defaults)"
    )

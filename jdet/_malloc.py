"""Flat memory on long videos: large buffers go straight back to the operating system.

glibc's malloc serves a request of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at start) with
its own ``mmap``, unmapped on free. But each time such a block is freed the threshold rises to
its size (up to 32 MiB), so after the first decoded frames, the frame-sized buffers of a video
(a 1080p RGB frame is 6 MiB; the letterboxed batch, XLA's literals) come from the heap
arenas instead, interleaved with longer-lived allocations of XLA's threads; the arenas
fragment and the process's resident memory creeps up by a few hundred MiB per thousand
1080p frames. With the threshold fixed it stays flat (docs/inference.md §5 has the measured
table, `python -m benchmarks stream`).

`fix_mmap_threshold()` sets the threshold once (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, which
also stops it from moving). Process-wide, so only the commands call it (`jdet.predict`,
`jdet.evaluate`), never the library. Outside glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # <malloc.h>
DEFAULT_BYTES = 1 << 20


def fix_mmap_threshold(nbytes: int = DEFAULT_BYTES) -> bool:
    """Serve allocations of at least `nbytes` with mmap from now on (glibc); False where the C
    library has no ``mallopt`` or refused the value."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1

"""`release_free_memory` hands freed heap memory back to the system (glibc)."""
import ctypes
import ctypes.util
import platform

import pytest

from mistralrs.engine.heap import release_free_memory


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_freed_blocks_between_live_ones_are_returned():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 10  # below glibc's mmap threshold: from the heap
    blocks = [libc.malloc(size) for _ in range(1024)]  # 64 MiB
    for block in blocks:
        ctypes.memset(block, 1, size)
    before = _rss_mib()
    for block in blocks[:-1]:  # the last one keeps the heap from shrinking at its top
        libc.free(block)
    freed = _rss_mib()
    release_free_memory()
    released = _rss_mib()
    libc.free(blocks[-1])
    assert before - freed < 16, "glibc returned the blocks itself: the test proves nothing"
    assert freed - released > 48

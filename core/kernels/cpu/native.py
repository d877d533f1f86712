"""Builds and loads the native CPU kernels (`quant_matmul.c`, `ops.c`, `threads.c`,
`gguf_strings.c`: GGUF string arrays, `vocab.c`: a vocabulary's tables and merging) as one shared
library, called through ctypes.

The library is compiled on first use with the machine's C compiler (`$CC`, else `cc`) for the
machine's own instruction set (`-march=native`: AVX-512 VNNI or AVX2 where the CPU has them,
see `isa.h`) and cached under `$MISTRALRS_CACHE_DIR` (default `~/.cache/mistralrs`), keyed by
the sources, the flags and the CPU's feature flags; a build takes a few seconds, once per
machine.

`library()` is None where the kernels cannot be used: no compiler (a warning says so, once),
`MISTRALRS_CPU_KERNELS=reference` (read once per process), or inside `reference_mode()`. Then
the torch references run instead: float32 activations, slow, for checking numbers (a model
keeps the path it was loaded with).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from ctypes import c_float, c_int, c_longlong, c_void_p
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = ("quant_matmul.c", "ops.c", "threads.c", "gguf_strings.c", "vocab.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-ffp-contract=off",
         "-std=gnu11", "-pthread")
MODE_VARIABLE = "MISTRALRS_CPU_KERNELS"

_P, _I, _L, _F = c_void_p, c_int, c_longlong, c_float
SIGNATURES = {
    "mrs_repacked_bytes": (_L, [_I, _L, _L]),
    "mrs_repack": (_I, [_I, _P, _L, _L, _P, _I]),
    "mrs_repack_background": (_I, [_I, _P, _L, _L, _P, _I]),
    "mrs_background_wait": (None, []),
    "mrs_dequantize_repacked": (_I, [_I, _P, _L, _L, _P]),
    "mrs_dequantize_rows": (_I, [_I, _P, _L, _L, _P, _L, _F, _P, _I]),
    "mrs_dequantize_repacked_rows": (_I, [_I, _P, _L, _L, _P, _L, _F, _P, _I]),
    "mrs_activation_bytes": (_L, [_L, _L]),
    "mrs_quantize_dequantize_rows": (None, [_P, _L, _L, _I, _P, _P]),
    "mrs_activation_group": (_I, [_I]),
    "mrs_quant_matmul": (_I, [_P, _I, _P, _L, _L, _L, _P, _I]),
    "mrs_matmul_isa": (ctypes.c_char_p, []),
    "mrs_rms_norm": (None, [_P, _L, _L, _I, _P, _I, _P, _I, _L, _I, _F, _I]),
    "mrs_rope_cos_sin": (None, [_P, _L, _P, _I, _F, _P, _P]),
    "mrs_rotary": (None, [_P, _L, _L, _I, _P, _L, _L, _I, _L, _I, _P, _P]),
    "mrs_gated_activation": (None, [_P, _P, _L, _L, _I, _I, _P, _I]),
    "mrs_paged_decode_attention": (None, [_P, _L, _L, _P, _L, _L, _L, _P, _L, _L, _L, _I, _P, _P,
                                          _L, _I, _I, _I, _I, _I, _I, _F, _I, _F, _P, _P, _I]),
    "mrs_decode_attention_scratch": (_L, [_I, _I, _I, _I, _I]),
    "mrs_gguf_strings": (_L, [_P, _L, _L, _L, _P, _P, ctypes.POINTER(_L)]),
    "mrs_vocab_new": (_P, [ctypes.c_char_p, _P, _L, ctypes.c_char_p, _P, _L, ctypes.POINTER(_L)]),
    "mrs_vocab_free": (None, [_P]),
    "mrs_vocab_token_id": (_L, [_P, ctypes.c_char_p, _L]),
    "mrs_bpe_encode": (_L, [_P, ctypes.c_char_p, _L, _I, _P]),
    "mrs_spm_encode": (_L, [_P, _P, _P, _I, ctypes.c_char_p, _L, _P]),
    "mrs_argmax_rows": (None, [_P, _L, _L, _L, _P, _P, _I]),
    "mrs_store_kv": (None, [_P, _L, _L, _P, _L, _L, _P, _L, _L, _L, _P, _L, _L, _L, _I, _P, _L,
                            _I, _I, _I, _I]),
}


class Recording:
    """The native calls one thread made while recording (`recording()`), with their arguments,
    to be made again by `replay` on the same memory: a decode step captured once and replayed
    without running its Python (the CPU's counterpart of a CUDA graph). `keep` holds every
    buffer the calls point into, so that none is freed while the recording exists."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.keep: list = []

    def replay(self) -> None:
        for fn, args in self.calls:
            fn(*args)


_thread = threading.local()


def call(fn, *args):
    """fn(*args), for a native kernel `fn` of `library()`; recorded too while this thread is
    recording. ctypes arrays among the arguments are recorded as copies (callers reuse them),
    the other arguments as instances of their ctypes types: a replayed call then skips
    converting each Python number again (~0.3 us an argument, 2-4 us a call)."""
    recording = getattr(_thread, "recording", None)
    if recording is not None:
        recording.calls.append((fn, tuple(
            type(a).from_buffer_copy(a) if isinstance(a, ctypes.Array) else kind(a)
            for kind, a in zip(fn.argtypes, args))))
    return fn(*args)


def keep_alive(buffer) -> None:
    """Make a recording in progress on this thread hold `buffer` (a scratch buffer its calls
    use that the caller may replace later)."""
    recording = getattr(_thread, "recording", None)
    if recording is not None:
        recording.keep.append(buffer)


@contextlib.contextmanager
def recording():
    """Record the native calls of this thread into the `Recording` it yields."""
    if getattr(_thread, "recording", None) is not None:
        raise RuntimeError("already recording on this thread")
    _thread.recording = Recording()
    try:
        yield _thread.recording
    finally:
        _thread.recording = None


def mode() -> str:
    value = os.environ.get(MODE_VARIABLE, "native").lower()
    if value not in ("native", "reference"):
        raise ValueError(f"{MODE_VARIABLE} must be 'native' or 'reference', not {value!r}")
    return value


_reference_mode = False


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (reference mode, or they cannot be built here)."""
    return None if _reference_mode else _configured_library()


@functools.cache
def _configured_library() -> ctypes.CDLL | None:
    return None if mode() == "reference" else _load()


@contextlib.contextmanager
def reference_mode():
    """Run the torch references instead of the native kernels while inside (for every thread:
    a model loaded here keeps using them)."""
    global _reference_mode
    previous, _reference_mode = _reference_mode, True
    try:
        yield
    finally:
        _reference_mode = previous


def cache_dir() -> Path:
    root = os.environ.get("MISTRALRS_CACHE_DIR") or Path.home() / ".cache" / "mistralrs"
    return Path(root) / "native"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def build(target: Path, flags: tuple[str, ...] = FLAGS) -> None:
    """Compile the sources into the shared library `target` (atomically: a concurrent build of
    the same library by another process is harmless)."""
    here = Path(__file__).resolve().parent
    compiler = os.environ.get("CC", "cc")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        command = [compiler, *flags, "-o", tmp, *(str(here / s) for s in SOURCES), "-lm"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(command)}` failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _load() -> ctypes.CDLL | None:
    here = Path(__file__).resolve().parent
    key = hashlib.sha256()
    for source in (*SOURCES, *sorted(header.name for header in here.glob("*.h"))):
        key.update((here / source).read_bytes())
    key.update(" ".join(FLAGS).encode())
    key.update(_cpu_flags().encode())
    target = cache_dir() / f"libmistralrs_cpu-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            log.info("building the native CPU kernels into %s", target)
            build(target)
        return load(target)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("the native CPU kernels cannot be built (%s); the CPU runs the much slower "
                    "torch references. Install a C compiler with OpenMP (gcc) to fix this.", e)
        return None

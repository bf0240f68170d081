"""The compiled CPU kernel of YOSO's LSH mode (``yoso_lsh.cpp``: hash codes, bucket sums, the backward), built
at first use.

torch's extension builder (``torch.utils.cpp_extension.load``: a C++ compiler and ninja) compiles the file once
per machine kind and source, into torch's extensions cache (``TORCH_EXTENSIONS_DIR``), under a lock that other
processes wait on; later processes only load it. Where it cannot be built (no compiler, no ninja) YOSO says so
in one warning and keeps its torch route, which computes the same sums. ``LONGATTN_NATIVE=0`` turns the kernel
off. Only fp32 tensors on the CPU go through it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("yoso_lsh.cpp")
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "lib": the library, or None once a build has failed

# Instruction sets to compile for, by what torch found the CPU to support (the extension is named after it,
# so that a cache shared between machines never hands one of them code it cannot run).
_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}

_I64, _F32, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "longattn_yoso_supports": [_I64],
    "longattn_yoso_codes": [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64],
    "longattn_yoso_cumulate": [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR] + [_I64] * 6 + [_F32, ctypes.c_int],
    "longattn_yoso_backward": [_PTR, _I64, _I64, _I64] * 4
    + [_PTR] * 5
    + [_I64] * 6
    + [_F32, _F32, ctypes.c_int],
}


def enabled() -> bool:
    """Whether the kernel may be used (``LONGATTN_NATIVE`` is not 0)."""
    return os.environ.get("LONGATTN_NATIVE", "1") != "0"


def library():
    """The loaded kernel (a ctypes library), built on the first call; None where it cannot be."""
    if "lib" in _loaded:
        return _loaded["lib"]
    with _lock:
        if "lib" not in _loaded:
            try:
                _loaded["lib"] = _build()
            except Exception as err:  # no compiler, no ninja, a failed build: the torch route still works
                first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                warnings.warn(
                    f"YOSO's compiled CPU kernel could not be built ({first[:200]}); using the slower torch "
                    "route (install a C++ compiler and `pip install ninja` for the fast one, or set "
                    "LONGATTN_NATIVE=0 to silence this)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _loaded["lib"] = None
    return _loaded["lib"]


def _build():
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the pip package's binary, in a virtual environment not activated
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    capability = torch.backends.cpu.get_cpu_capability().upper()
    name = f"longattn_yoso_{capability.lower()}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    before = set(torch.ops.loaded_libraries)
    cpp_extension.load(
        name,
        [str(_SOURCE)],
        extra_cflags=["-O3", "-std=c++17", "-fopenmp-simd", *_FLAGS.get(capability, [])],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    # The builder loads the library into the process, named <name>.so, or <name>_v<k>.so after the source or
    # flags changed within one process: the one it just added.
    (path,) = (p for p in set(torch.ops.loaded_libraries) - before if Path(p).name.startswith(name))
    lib = ctypes.CDLL(path)
    for symbol, args in _SIGNATURES.items():
        fn = getattr(lib, symbol)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def usable(*tensors: torch.Tensor) -> bool:
    """Whether these tensors can go through the kernel: fp32 on the CPU, rows contiguous, a supported width."""
    if not enabled() or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if any(t.stride(-1) != 1 for t in tensors):
        return False
    lib = library()
    return lib is not None and bool(lib.longattn_yoso_supports(tensors[0].shape[-1]))


def _check(status: int) -> None:
    """The kernel's status: 0 done, 2 out of memory (1, an unsupported width, is ruled out by :func:`usable`)."""
    if status == 2:
        raise MemoryError("YOSO's compiled CPU kernel ran out of memory for its scratch buffers")
    if status != 0:
        raise RuntimeError(f"YOSO's compiled CPU kernel failed with status {status}")


def _rows(x: torch.Tensor) -> list:
    """A (B, H, N, D) tensor as the kernel reads it: data pointer and the strides of B, H and N."""
    return [x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)]


def _codes(codes: torch.Tensor) -> torch.Tensor:
    return codes.to(torch.int32).contiguous()


def codes(projected: torch.Tensor, tau: int, out: torch.Tensor) -> None:
    """Writes the τ-bit codes of projections (P, rows, hashes · τ), contiguous, into ``out`` (P, rows, hashes)
    int32, whose rows of one problem are contiguous: bit t of hash f is [projection f·τ + t > 0]."""
    p, rows, width = projected.shape
    library().longattn_yoso_codes(
        projected.data_ptr(), p, rows, width // tau, tau, out.data_ptr(), out.stride(0)
    )


def cumulate(codes_q: torch.Tensor, codes_k: torch.Tensor, values: torch.Tensor, span: int) -> torch.Tensor:
    """:func:`yoso.cumulate`, the mean over hashes of each query's bucket sum of the values: (B, H, N, D)."""
    b, h, n, d = values.shape
    cq, ck = _codes(codes_q), _codes(codes_k)
    out = torch.empty(b, h, n, d)
    _check(library().longattn_yoso_cumulate(
        *_rows(values), cq.data_ptr(), ck.data_ptr(), out.data_ptr(), b * h, h, n, d, cq.shape[-1], span,
        1.0 / cq.shape[-1], torch.get_num_threads(),
    ))  # fmt: skip
    return out


def collision_gradients(codes_q, codes_k, q, k, v, g, span: int):
    """:func:`yoso.collision_gradients` (the three means over hashes) in one pass over each bucket."""
    b, h, n, d = q.shape
    cq, ck = _codes(codes_q), _codes(codes_k)
    nh = cq.shape[-1]
    gq, gk, gv = (torch.empty(b, h, n, d) for _ in range(3))
    _check(library().longattn_yoso_backward(
        *_rows(q), *_rows(k), *_rows(v), *_rows(g), cq.data_ptr(), ck.data_ptr(), gq.data_ptr(), gk.data_ptr(),
        gv.data_ptr(), b * h, h, n, d, nh, span, 1.0 / nh, 1.0 / nh, torch.get_num_threads(),
    ))  # fmt: skip
    return gq, gk, gv

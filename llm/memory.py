"""Weight bytes and peak memory of a forward / ZO step / backprop step.

weight_bytes(model): bytes of every parameter and of the QuantLinear codes
(packed int4 codes + scales + every float weight left: embeddings,
LayerNorms, biases, head), each storage counted once (tied weights).
``linear_only=True`` counts only the weight matrices of the Linear layers
(nn.Linear.weight, or QuantLinear codes + scales), no bias.

peak_memory(fn): the process's live heap bytes during fn, on CPU or CUDA.
On CUDA: torch.cuda.max_memory_allocated. On CPU torch has no allocator
statistics, and tracemalloc does not see torch; torch's CPU tensors come from
glibc malloc, so after every aten op (a TorchDispatchMode) we read glibc's
mallinfo2 (uordblks + hblkhd = bytes malloc'ed and in use, heap and mmapped)
and keep the maximum. Peak = the weights' bytes (which may live in a mmapped
checkpoint that malloc does not see) + max(in-use during fn) - in-use before.
It misses scratch memory freed inside a single op (no op here allocates a
workspace larger than its output), so it is a lower bound of a few percent.
"""
from __future__ import annotations

import ctypes
import gc

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .quant import QuantLinear


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def weight_bytes(model: nn.Module, linear_only: bool = False) -> int:
    """Bytes held by model's weights (see module docstring)."""
    if linear_only:
        tensors = []
        for m in model.modules():
            if isinstance(m, QuantLinear):
                tensors += [m.codes, m.scales]
            elif isinstance(m, nn.Linear):
                tensors.append(m.weight)
    else:
        tensors = list(model.parameters()) + [m.codes for m in model.modules() if isinstance(m, QuantLinear)]
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += _nbytes(t)
    return total


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def heap_in_use() -> int:
    """Bytes malloc'ed and not freed in this process (glibc mallinfo2)."""
    if _LIBC is None:
        raise RuntimeError("peak memory on CPU needs glibc's mallinfo2 (Linux, glibc >= 2.33)")
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class _PeakMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.peak = heap_in_use()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out


def peak_memory(fn, model: nn.Module | None = None, device: str = "cpu") -> dict:
    """Run fn() once; {'peak': bytes, 'extra': bytes above the state before, 'weights': weight_bytes(model)}."""
    weights = weight_bytes(model) if model is not None else 0
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        return {"peak": before + extra, "extra": extra, "weights": weights}
    before = heap_in_use()
    with _PeakMode() as mode:
        fn()
    extra = max(0, mode.peak - before)
    return {"peak": weights + extra, "extra": extra, "weights": weights}

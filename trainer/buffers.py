"""Large CPU buffers that every training step allocates anew, kept from one step to the next.

On CPU there is no caching allocator. glibc hands a block of more than 32 MiB back to the
kernel when it is freed, and the next step's block of the same size is faulted in again, page
by page, on its first write. The two (vocab x d_model) gradients, the input embedding's and
the output layer's, are such blocks: 0.3 GB each at olmo2-190M. There, on the bench machine
(torch.profiler, one step of 2 x 512 tokens), zero-filling a fresh embedding gradient took
0.48 s of a 6.2 s step, nearly all of it page faults, and the matmuls that first write the
output layer's took ~0.2 s longer than over memory already in place.

`BufferPool.empty` keeps the memory of such buffers and hands it out again, but only when no
tensor outside the pool still refers to it: a gradient that the caller kept (gradient
accumulation, a reference kept for logging, a view) is never written over. A tensor handed out is
a fresh tensor over the kept memory, so autograd can take it as a parameter's `.grad`
without a copy, exactly as it takes a freshly allocated one, and DDP's and FSDP's hooks see
the same thing. The pool keeps at most `max_per_shape` buffers of one shape and dtype, for
the `max_shapes` shapes asked for last, so it holds no more than the most buffers of those
shapes that were alive at once: for a training step, memory it would have held anyway while
the gradients were alive. The cost is that this memory stays resident between steps, when
the allocator would have returned it: the process's peak grew by ~0.23 GB (4%) at
olmo2-190M, 2 x 512 tokens, because one kept gradient block is idle while the loss runs.

On CUDA (and any other device) `empty` is `torch.empty`: the caching allocator already
keeps freed blocks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch


def _storage_use_count():
    """torch's count of references to a storage, if it behaves as the pool relies on: 1 when only
    the pool's storage object refers to the memory, more while any tensor or view does. It is
    a private function; where it is missing or counts otherwise, nothing is pooled."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    try:
        tensor = torch.empty(4)
        storage = tensor.untyped_storage()
        view = tensor[1:]
        del tensor
        with_view = count(storage._cdata)
        del view
        alone = count(storage._cdata)
    except Exception:  # noqa: BLE001 - any failure means: do not pool
        return None
    return count if alone == 1 and with_view > 1 else None


# The count of references to a storage is what makes reuse safe; without it, nothing is pooled.
_use_count = _storage_use_count()


class BufferPool:
    """Uninitialised CPU tensors of a given shape and dtype, over memory kept between calls."""

    def __init__(self, max_per_shape: int = 3, max_shapes: int = 4):
        self.max_per_shape = max_per_shape
        self.max_shapes = max_shapes
        self._kept: OrderedDict[tuple, list[torch.UntypedStorage]] = OrderedDict()
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out over kept memory (for tests and profiles)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
        """`torch.empty(shape, dtype=dtype, device=device)`, over kept memory where it can be."""
        device = torch.device(device)
        shape = tuple(int(s) for s in shape)
        if device.type != "cpu" or _use_count is None:
            return torch.empty(shape, dtype=dtype, device=device)
        key = (shape, dtype)
        with self._lock:
            kept = self._kept.setdefault(key, [])
            self._kept.move_to_end(key)
            while len(self._kept) > self.max_shapes:  # a process that moved on to other shapes
                self._kept.popitem(last=False)
            for storage in kept:
                # 1: only the pool's own reference; any tensor over this memory adds one
                if _use_count(storage._cdata) == 1:
                    self.reused += 1
                    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
            tensor = torch.empty(shape, dtype=dtype)
            if len(kept) < self.max_per_shape:
                kept.append(tensor.untyped_storage())
            return tensor

    def clear(self) -> None:
        """Drop the pool's references; memory no tensor uses goes back to the allocator."""
        with self._lock:
            self._kept.clear()

    def kept_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes() for kept in self._kept.values() for s in kept)


# The pool that the model's embedding and the fused loss draw from.
DEFAULT_POOL = BufferPool()

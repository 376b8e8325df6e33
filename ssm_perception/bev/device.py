"""Moving encoder inputs to the model's device and reading counters back without stalls.

The encoders are plain torch, so the same code runs on the CPU (CI, the 2-core vehicle computer)
and on CUDA. Two things differ on a GPU and are handled here once:

- host arrays go up through pinned memory with ``non_blocking=True``, so the copy is queued on the
  stream and the host goes on preparing the next input (on the CPU ``upload`` is ``from_numpy``).
  Never ``torch.tensor(..., device=cuda)`` or ``.to(cuda)`` of a pageable tensor in the frame: torch
  then waits for the whole stream after the copy (a host synchronisation per call); small constants
  are cached per device (``constant``);
- counters for the stats dict (points used, dropped, ...) stay 0-d device tensors while encoding
  (``int(t.sum())`` would wait for the GPU each time); ``resolve_stats`` turns them all into Python
  numbers with one transfer, which the pipeline does after the frame's output copy.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor


def as_device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def upload(a, device=None) -> Tensor:
    """numpy (or a host tensor) -> tensor on ``device``: pinned + asynchronous on CUDA (no wait for
    the stream), zero-copy on the CPU."""
    t = a if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    dev = as_device(device)
    if dev.type == "cpu":
        return t
    if dev.type == "cuda":
        t = t.pin_memory()  # the caching host allocator keeps it until the copy has run
        return t.to(dev, non_blocking=True)
    return t.to(dev)


@functools.lru_cache(maxsize=64)
def constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor on ``device``, made once per (values, dtype, device) and reused (so no
    frame pays an upload for it). Treat it as read-only."""
    return upload(torch.tensor(values, dtype=dtype), device)


def pending_counters(stats: dict) -> list[tuple[dict, str, Tensor]]:
    """(container, key, tensor) of every tensor value in ``stats`` (nested dicts included)."""
    out = []
    for k, v in stats.items():
        if isinstance(v, Tensor):
            out.append((stats, k, v))
        elif isinstance(v, dict):
            out.extend(pending_counters(v))
    return out


def counters_tensor(stats: dict) -> Tensor | None:
    """The pending counters as one float64 vector on their device (None if there are none), for a
    caller that copies them to the host together with its own outputs (see ``fill_counters``)."""
    pend = pending_counters(stats)
    if not pend:
        return None
    if any(t.dtype.is_floating_point for _, _, t in pend):  # (a float32 would take the integers down with it)
        return torch.stack([t.reshape(()).to(torch.float64) for _, _, t in pend])
    # integer and bool counters (the encoders'): one cat (it promotes bool to int) and one cast, two kernels
    return torch.cat([t.reshape(1) for _, _, t in pend]).to(torch.float64)


def fill_counters(stats: dict, values) -> None:
    """Write host values (from ``counters_tensor``, same order) back into ``stats`` in place:
    integers stay ints, booleans bools."""
    for (box, key, t), v in zip(pending_counters(stats), list(values), strict=True):
        if t.dtype == torch.bool:
            box[key] = bool(v)
        elif t.dtype.is_floating_point:
            box[key] = float(v)
        else:
            box[key] = int(v)


def resolve_stats(stats: dict) -> dict:
    """Every tensor counter in ``stats`` -> a Python number, with one device-to-host copy."""
    vec = counters_tensor(stats)
    if vec is not None:
        fill_counters(stats, vec.cpu().tolist())
    return stats

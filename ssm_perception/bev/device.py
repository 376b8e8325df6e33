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
    if isinstance(a, Tensor):
        t = a
    else:
        arr = np.ascontiguousarray(a)
        if not arr.flags.writeable:  # torch has no read-only tensors: share only what may be written
            arr = arr.copy()
        t = torch.from_numpy(arr)
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


def cloud_block(points, fields: tuple[str, ...], capacity: int | None = None) -> tuple[np.ndarray, tuple[bool, ...], int]:
    """A decoded cloud (structured array, or float [N, >=3] with columns in ``fields`` order) ->
    (float32 [len(fields) + 1, capacity] host block, which fields are present, N). Row k holds field k
    (zeros where the field is absent), the last row 1 for a point and 0 for padding: a device
    encoder with a static shape (CUDA graph) reads the cloud from one fixed-size upload.
    ``capacity`` None: exactly N columns (no padding)."""
    arr = np.asarray(points)
    if arr.dtype.names is not None:
        arr = arr.reshape(-1)
        n = arr.shape[0]
        present = tuple(f in arr.dtype.names for f in fields)
    else:
        if arr.size == 0:
            arr = arr.reshape(0, len(fields))
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise ValueError(f"point array must be structured or [N, >=3], got shape {arr.shape}")
        n = arr.shape[0]
        present = tuple(k < arr.shape[1] for k in range(len(fields)))
    cap = n if capacity is None else max(int(capacity), n)
    block = np.empty((len(fields) + 1, cap), dtype=np.float32)
    for k, f in enumerate(fields):
        if not present[k]:
            block[k, :n] = 0.0
        elif arr.dtype.names is not None:
            block[k, :n] = arr[f]
        else:
            block[k, :n] = arr[:, k]
    block[-1, :n] = 1.0
    block[:, n:] = 0.0
    return block, present, n


def graph_capacity(n: int) -> int:
    """Padded point count for a CUDA-graphed encoder: the next power of two (at least 256), so a
    stream of clouds of varying size replays one or two graphs."""
    return max(256, 1 << max(0, int(n) - 1).bit_length())


class GraphCache:
    """Pure tensor functions replayed from CUDA graphs, one graph per (name, key, input shapes).

    ``run(name, key, fn, *inputs)``: with capture on and the inputs on CUDA, the first call captures
    ``fn(*static copies of the inputs)`` (after warm-up runs on a side stream); later calls copy the
    inputs into those buffers and replay the graph: tens of kernel launches for one. ``key`` must
    hold every host value ``fn`` depends on (flags, the sensor mounting, ...): per-frame numbers go
    in as tensors. Returns ``fn``'s outputs (a tuple of tensors); for a graph these are its static
    outputs, overwritten by its next replay: consume them within the frame. Anything else (the
    CPU, capture off, a capture that failed) runs ``fn`` eagerly: the same function, so the CPU
    tests cover what the GPU replays. ``status``: per name, 'captured' or why it runs eagerly."""

    WARMUP = 2

    def __init__(self, enabled: bool = True, pad_on_cpu: bool = False):
        self.enabled = enabled
        self.pad_on_cpu = pad_on_cpu  # tests: the padded static-shape inputs on the CPU too
        self.status: dict[str, str] = {}
        self.replays = 0
        self._graphs: dict = {}

    def pads(self, device: torch.device) -> bool:
        """Whether encoders pad their inputs to graph capacities on ``device``."""
        return self.enabled and (device.type == "cuda" or self.pad_on_cpu)

    def run(self, name: str, key, fn, *inputs: Tensor):
        if not (self.enabled and inputs and inputs[0].is_cuda) or self.status.get(name, "").startswith("failed"):
            return fn(*inputs)
        k = (name, key, tuple((tuple(x.shape), x.dtype) for x in inputs))
        entry = self._graphs.get(k)
        if entry is None:
            try:
                entry = self._capture(fn, inputs)
            except Exception as exc:  # noqa: BLE001 - a capture the driver or an op refuses: eager from now on
                import logging

                logging.getLogger(__name__).warning("CUDA graph of %s failed (%s); running it eagerly", name, exc)
                self.status[name] = f"failed, eager: {type(exc).__name__}: {exc}"[:300]
                return fn(*inputs)
            self._graphs[k] = entry
            self.status[name] = "captured"
        graph, static_in, outputs = entry
        for s, x in zip(static_in, inputs, strict=True):
            s.copy_(x, non_blocking=True)
        graph.replay()
        self.replays += 1
        return outputs

    def _capture(self, fn, inputs):
        static_in = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy caches (constants, tables) are made outside the capture
            for _ in range(self.WARMUP):
                fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        prev = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                outputs = fn(*static_in)
        except Exception:
            if torch.cuda.current_stream() != prev:  # a failed capture must not leave its stream current
                torch.cuda.set_stream(prev)
            raise
        return graph, static_in, outputs

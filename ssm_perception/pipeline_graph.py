"""The device half of a frame: temporal step + neck + heads + detection decode, and its read-back.

``PerceptionPipeline.process`` runs everything between the BEV features and the tracker through
this module, on the CPU and on CUDA alike:

- ``device_outputs``: occupancy / dynamic probabilities and the fixed-size detection table
  (``tracking.detections.decode_topk``), all on the model's device;
- ``CudaGraphStep``: on CUDA with ``model.cuda_graph`` on, the temporal step, neck, heads and that
  decode captured in CUDA graphs with static shapes. Two graphs ping-pong between two state
  buffers (graph 0 reads buffer 0 and writes buffer 1, graph 1 the reverse), so the state is never
  copied; the motion, dt and the reset mask go in through small static device buffers, a full
  reset zeroes the input buffer and uses the identity motion. Capturable today: the Mamba core
  with the 'fused' backend (its warp takes a device-side affine); anything else, or a capture that
  fails, runs eagerly and says why (``reason``);
- ``read_back``: the frame's one device-to-host copy on CUDA (occupancy and dynamic grids as
  uint8, the unknown mask, the detection table, packed into one byte buffer); on the CPU the
  tensors are simply viewed as numpy arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ssm_perception.config import GridConfig
from ssm_perception.heads import occupancy_probabilities
from ssm_perception.tracking.detections import DET_COLUMNS, MAX_DETECTIONS, decode_topk

log = logging.getLogger(__name__)
WARMUP_RUNS = 3  # eager runs on a side stream before capture (Triton autotuning, cuDNN algorithm choice)
_Q = 255.0  # occupancy and dynamic probabilities travel as round(p * 255) in uint8 on CUDA


@dataclass
class DeviceFrame:
    """What the device computed for one frame (tensors on the model's device)."""

    p_occ: Tensor  # [1, H, W] float32
    p_dyn: Tensor  # [1, H, W] float32
    table: Tensor  # [K, len(DET_COLUMNS)] float32 (tracking.detections.decode_topk)


def device_outputs(heads: dict[str, Tensor], grid: GridConfig, floor: float,
                   max_detections: int = MAX_DETECTIONS) -> DeviceFrame:
    p_occ, p_dyn = occupancy_probabilities(heads)
    return DeviceFrame(p_occ, p_dyn, decode_topk(heads, grid, floor, max_detections))


@dataclass
class HostFrame:
    occupancy: np.ndarray  # [H, W] float32, finite (NaN -> 0.5, +-inf -> 1 / 0)
    dynamic: np.ndarray  # [H, W] float32, finite
    unknown: np.ndarray  # [H, W] bool (never observed, or occupancy not finite)
    table: np.ndarray  # [K, len(DET_COLUMNS)] float32
    copies: int  # device-to-host copies this took (1 on CUDA, 0 on the CPU)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # float32 tensors that came along, same shapes
    scalars: np.ndarray | None = None  # float64 [S]: the caller's scalars (counters, health), exact


def read_back(frame: DeviceFrame, never_observed: Tensor, extras: dict[str, Tensor] | None = None,
              scalars: Tensor | None = None) -> HostFrame:
    """``never_observed`` [H, W] bool on the device; ``extras``: other float tensors the caller
    needs on the host this frame, ``scalars`` a float64 vector of its counters and flags (both ride
    along in the same copy). On the CPU: views, exact. Elsewhere: one packed copy; occupancy and
    dynamic probabilities are then quantised to 1/255 (the published OccupancyGrid has 1/100),
    extras, scalars and detections travel exactly."""
    occ, dyn = frame.p_occ[0].float(), frame.p_dyn[0].float()
    if occ.device.type == "cpu":
        o, d = occ.numpy(), dyn.numpy()
        unknown = never_observed.cpu().numpy() | ~np.isfinite(o)
        return HostFrame(np.nan_to_num(o, nan=0.5, posinf=1.0, neginf=0.0),
                         np.nan_to_num(d, nan=0.0, posinf=1.0, neginf=0.0), unknown,
                         frame.table.float().numpy(), 0, {k: v.float().numpy() for k, v in (extras or {}).items()},
                         None if scalars is None else scalars.double().numpy())
    return packed_read_back(frame, never_observed, extras, scalars)


_PINNED: dict = {}  # device -> reusable pinned host buffer of the packed read-back (grown as needed)


def _host_buffer(nbytes: int, device: torch.device) -> Tensor:
    """A pinned host byte buffer for the read-back (CUDA: the copy runs at full speed and straight
    into it); reused every frame: everything taken from it is copied out before the next frame."""
    if device.type != "cuda":
        return torch.empty(nbytes, dtype=torch.uint8)
    buf = _PINNED.get(device)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        _PINNED[device] = buf
    return buf[:nbytes]


def packed_read_back(frame: DeviceFrame, never_observed: Tensor, extras: dict[str, Tensor] | None = None,
                     scalars: Tensor | None = None) -> HostFrame:
    """The packed single copy of ``read_back`` (used off the CPU; callable anywhere, for tests):
    ``pack_frame`` on the device, one copy into a pinned buffer, ``unpack_frame`` on the host."""
    occ = frame.p_occ[0]
    extras = {k: v.float().contiguous().to(occ.device) for k, v in (extras or {}).items()}
    scalars = torch.zeros(0, dtype=torch.float64, device=occ.device) if scalars is None else \
        scalars.reshape(-1).to(occ.device, torch.float64)
    packed = pack_frame(frame.p_occ, frame.p_dyn, frame.table, never_observed.to(occ.device), scalars,
                        *extras.values())
    return unpack_frame(copy_to_host(packed), tuple(occ.shape), frame.table.shape[0],
                        {k: tuple(v.shape) for k, v in extras.items()}, scalars.numel())


def pack_frame(p_occ: Tensor, p_dyn: Tensor, table: Tensor, never_observed: Tensor, scalars: Tensor,
               *extras: Tensor) -> Tensor:
    """The device half of the packed read-back, a pure tensor function (a CUDA pipeline replays it as
    a graph): one uint8 buffer of occupancy and dynamic probabilities (round(p * 255)), the unknown
    mask (never observed, or occupancy not finite), the detection table and the float32 ``extras``
    (4-byte aligned), the float64 ``scalars`` (8-byte aligned)."""
    occ, dyn = p_occ[0].float(), p_dyn[0].float()
    dev = occ.device
    h, w = occ.shape
    unknown = never_observed | ~torch.isfinite(occ)
    occ_q = (torch.nan_to_num(occ, nan=0.5, posinf=1.0, neginf=0.0).clamp(0, 1) * _Q).round().to(torch.uint8)
    dyn_q = (torch.nan_to_num(dyn, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1) * _Q).round().to(torch.uint8)
    table = table.float().contiguous()
    n = h * w
    pad = (-3 * n) % 4  # the float32 parts start 4-byte aligned
    parts = [occ_q.reshape(-1), dyn_q.reshape(-1), unknown.reshape(-1).to(torch.uint8),
             torch.zeros(pad, dtype=torch.uint8, device=dev), table.reshape(-1).view(torch.uint8)]
    extras = [v.float().contiguous() for v in extras]
    parts += [v.reshape(-1).view(torch.uint8) for v in extras]
    n_float = table.numel() + sum(v.numel() for v in extras)
    pad8 = (-(3 * n + pad + 4 * n_float)) % 8  # the float64 scalars start 8-byte aligned
    parts += [torch.zeros(pad8, dtype=torch.uint8, device=dev), scalars.reshape(-1).to(torch.float64).view(torch.uint8)]
    return torch.cat(parts)


def copy_to_host(packed: Tensor) -> np.ndarray:
    """The frame's one device-to-host copy, into a reused pinned buffer, and the one wait for it."""
    buf = _host_buffer(packed.numel(), packed.device)
    buf.copy_(packed, non_blocking=True)
    if packed.device.type == "cuda":
        torch.cuda.current_stream(packed.device).synchronize()
    return buf.numpy()


def unpack_frame(host: np.ndarray, shape: tuple[int, int], table_rows: int, extras: dict[str, tuple],
                 n_scalars: int) -> HostFrame:
    """The host half: ``pack_frame``'s bytes -> HostFrame (every array copied out of ``host``)."""
    h, w = shape
    n = h * w
    pad = (-3 * n) % 4
    n_table = table_rows * len(DET_COLUMNS)
    sizes = {k: int(np.prod(v)) for k, v in extras.items()}
    n_float = n_table + sum(sizes.values())
    floats = host[3 * n + pad:3 * n + pad + 4 * n_float].view(np.float32)
    at8 = 3 * n + pad + 4 * n_float + (-(3 * n + pad + 4 * n_float)) % 8
    out = {}
    at = n_table
    for k, v in extras.items():
        out[k] = floats[at:at + sizes[k]].reshape(v).copy()
        at += sizes[k]
    return HostFrame(host[:n].reshape(h, w).astype(np.float32) / np.float32(_Q),
                     host[n:2 * n].reshape(h, w).astype(np.float32) / np.float32(_Q),
                     host[2 * n:3 * n].reshape(h, w).astype(bool),
                     floats[:n_table].reshape(-1, len(DET_COLUMNS)).copy(), 1, out,
                     host[at8:at8 + 8 * n_scalars].view(np.float64).copy())


def graph_support(model, device: torch.device) -> str | None:
    """None if ``CudaGraphStep`` can capture this model on this device, else why not."""
    if device.type != "cuda":
        return f"device {device} is not CUDA (CUDA graphs are a CUDA feature; eager here)"
    core = getattr(model, "core", None)
    if model.kind != "mamba" or core is None:
        return f"model.kind {model.kind!r}: only the Mamba core has a capturable step"
    if getattr(core, "backend", None) != "fused" or not hasattr(core, "static_warp_step"):
        return (f"model.backend {getattr(core, 'backend', None)!r}: only 'fused' takes its warp from device "
                "buffers (the others compute the warp on the host every frame)")
    return None


class CudaGraphStep:
    """Temporal step + neck + heads + decode of ``model`` captured in two CUDA graphs.

    ``__call__(x, prev_state, affine, bilinear, dt_s, reset_mask)`` -> (DeviceFrame, new state);
    the new state is one of the two internal buffers: hand it back as ``prev_state`` next frame
    (anything else, e.g. a fresh zero state after a full reset, is copied into the input buffer).
    ``capture=False`` runs the very same static-buffer function eagerly (the CPU tests use this,
    with the fused kernel under Triton's interpreter)."""

    def __init__(self, model, grid: GridConfig, floor: float, max_detections: int = MAX_DETECTIONS,
                 capture: bool = True):
        self.model, self.grid_cfg, self.floor, self.max_detections = model, grid, floor, max_detections
        self.core = model.core
        dev = model.device
        nx, ny = model.grid.nx, model.grid.ny
        self.x = torch.zeros(1, model.in_channels, nx, ny, device=dev)
        self.identity = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], device=dev)  # affine of "no motion"
        self.affine = self.identity.clone()
        self.dt = torch.full((1,), 0.1, device=dev)
        self.reset = torch.zeros(1, nx, ny, dtype=torch.bool, device=dev)
        self.states = [model.init_state(1, dev)["ssm"] for _ in range(2)]
        self.graphs: list | None = None
        self.outputs: list[DeviceFrame] | None = None
        self.capture = capture
        self.current = 0  # the buffer holding the latest state
        self.replays = 0

    def _run(self, src: int) -> DeviceFrame:
        """The captured function: reads state buffer ``src``, writes the other one."""
        m = self.model
        y = self.core.static_warp_step(m.stem(self.x), self.states[src], self.affine, True, self.dt, self.reset,
                                       out=self.states[1 - src])
        return device_outputs(m._heads(y), self.grid_cfg, self.floor, self.max_detections)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._run(0)
                self._run(1)
        torch.cuda.current_stream().wait_stream(side)
        graphs, outputs = [], []
        pool = None
        for src in (0, 1):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                outputs.append(self._run(src))
            pool = g.pool()  # the two graphs never run at once: they share their temporaries
            graphs.append(g)
        for s in self.states:
            s.zero_()
        self.graphs, self.outputs = graphs, outputs

    def __call__(self, x: Tensor, prev_state: dict, affine: Tensor | None, bilinear: bool, dt_s: float,
                 reset_mask: Tensor | None) -> tuple[DeviceFrame, dict]:
        # A cell-aligned motion (bilinear False: integer affine) goes through the captured bilinear
        # kernel too: taps with weights 1 and 0 move the values exactly as 'nearest' does.
        if self.capture and self.graphs is None:
            self._capture()
        prev = prev_state["ssm"]
        src = self.current
        if prev is not self.states[src]:
            self.states[src].copy_(prev)
        self.x.copy_(x, non_blocking=True)
        if affine is None:
            self.affine.copy_(self.identity)
        else:
            aff = affine.reshape(1, 6)
            if self.affine.is_cuda and not aff.is_cuda:
                aff = aff.pin_memory()  # a pageable host-to-device copy may wait for the stream
            self.affine.copy_(aff, non_blocking=True)
        self.dt.fill_(float(dt_s))
        if reset_mask is None:
            self.reset.zero_()
        else:
            self.reset.copy_(reset_mask.reshape(self.reset.shape), non_blocking=True)
        if self.capture:
            self.graphs[src].replay()
            out = self.outputs[src]
        else:
            out = self._run(src)
        self.current = 1 - src
        self.replays += 1
        return out, {"ssm": self.states[self.current]}


def make_graph_step(model, grid: GridConfig, floor: float, enabled: bool) -> tuple[CudaGraphStep | None, str]:
    """The graph step for this model, or None and the reason it runs eagerly."""
    if not enabled:
        return None, "model.cuda_graph is off"
    why = graph_support(model, model.device)
    if why is not None:
        return None, why
    return CudaGraphStep(model, grid, floor), "captured on the first frame"

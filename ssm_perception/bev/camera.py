"""Camera -> BEV by inverse perspective mapping (IPM) onto the ground plane.

Each BEV cell centre, placed on the ground (z = ground_z in base_link), is projected into the
image with the pinhole model (K from CameraInfo, T_base_camera to the optical frame: z forward,
x right, y down); simple image features are sampled there. IPM is only right for things on the
ground (lane marks, road vs kerb) and smears tall objects along their rays; the learned stem and
the LiDAR channels correct for that. The frustum-visibility channel says which cells the camera
can see at all. Lens distortion is ignored (rectified images, or small distortion assumed).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssm_perception.bev.device import GraphCache, as_device, upload
from ssm_perception.bev.grid import BevGrid

CAMERA_CHANNELS = [
    "camera_valid",  # 1 where an image was available this frame (constant plane)
    "camera_r",  # sampled colour, [0, 1] - 0.5 (0 outside the frustum)
    "camera_g",
    "camera_b",
    "camera_grad",  # Sobel gradient magnitude of the intensity (edges, lane marks)
    "camera_visible",  # 1: the cell's ground point projects into the image in front of the camera
]
_WORK_HEIGHT = 240  # images are area-downsampled to about this height first: cheap, less aliasing


def image_to_tensor(image, factor: int = 1, device=None, on_device: bool | None = None) -> Tensor:
    """[H, W, 3] RGB or [H, W] mono (uint8/uint16 or float in [0, 1]) -> float32 [1, 3, h, w] in
    [0, 1], area-downsampled by an integer ``factor`` (h = H // factor).

    The averaging runs on the raw HWC array with strided sums (integer accumulators for integer
    images) before any float conversion or transpose: on the CPU target that is ~5x cheaper than
    converting the full image and pooling it in torch. Off the CPU (``on_device`` None: decided by
    ``device``) the raw image goes up as it is and the same sums run on the device instead."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got {a.shape}")
    a = a[:, :, :3]
    f = max(1, int(factor))
    hh, ww = a.shape[0] // f, a.shape[1] // f
    if hh == 0 or ww == 0:
        raise ValueError(f"image {a.shape[:2]} smaller than the downsampling factor {f}")
    scale = {np.dtype(np.uint8): 1 / 255.0, np.dtype(np.uint16): 1 / 65535.0}.get(a.dtype, 1.0)
    if on_device is None:
        on_device = as_device(device).type != "cpu"
    if on_device and a.dtype != np.uint16:  # (torch has no uint16 arithmetic everywhere: those stay on the host)
        # The raw image goes up as it is (uint8: a quarter of the float bytes) and the same sums run
        # on the device: integer-valued float32 sums (exact below 2^24) times the same float32
        # factor as below, so the values equal the host path's.
        return reduce_on_device(upload(a[: hh * f, : ww * f], device), f, float(np.float32(scale / (f * f))),
                                a.dtype.kind in "ui")
    acc_type = np.uint32 if a.dtype.kind in "ui" else np.float32
    acc = np.zeros((hh, ww, a.shape[2]), dtype=acc_type)
    for i in range(f):  # f*f strided adds over the image, not a per-pixel loop
        for j in range(f):
            acc += a[i : hh * f : f, j : ww * f : f]
    # the small HWC image goes up as it is (pinned, asynchronous on CUDA); the rest runs on the device
    t = upload(acc.astype(np.float32) * np.float32(scale / (f * f)), device).permute(2, 0, 1)
    t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
    t = t.contiguous().unsqueeze(0)
    return torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def reduce_on_device(raw: Tensor, factor: int, scale: float, integer: bool) -> Tensor:
    """``image_to_tensor``'s device half: the raw HWC image [H, W, C] (cropped to a multiple of
    ``factor``) -> float32 [1, 3, h, w]; ``scale`` is the float32 factor per summed value. A pure
    tensor function (part of the camera's CUDA graph)."""
    x = raw.permute(2, 0, 1).unsqueeze(0).float()
    if factor > 1:
        x = F.avg_pool2d(x, factor, stride=factor, divisor_override=1)
    t = (x * scale)[0]
    t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
    t = t.contiguous().unsqueeze(0)
    if integer:
        return t  # integer sums times scale: finite and within [0, 1] already
    return torch.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def project_cells(grid: BevGrid, K, T_base_camera, image_size: tuple[int, int], ground_z: float = 0.0,
                  max_range: float = 80.0, device=None) -> tuple[Tensor, Tensor, int]:
    """(uv [HW, 2] pixel coordinates, visible [HW] bool, number of visible cells as a 0-d tensor) of
    every cell's ground point, all on ``device`` (computed there: the frame assembler moves the
    camera through the ego motion, so T changes every frame and nothing needs the host).

    Cached on (grid, K, T, image size, ground_z, max_range, device) for a fixed mounting."""
    k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    t = np.asarray(T_base_camera, dtype=np.float64)
    if t.shape != (4, 4) or not np.isfinite(t).all() or not np.isfinite(k).all():
        raise ValueError("camera K must be 3x3 and T_base_camera a 4x4 transform, all finite")
    dev = as_device(device)
    key = (grid, k.tobytes(), t.tobytes(), tuple(image_size), float(ground_z), float(max_range), dev)
    hit = _PROJECTION_CACHE.get(key)
    if hit is None:
        uv, visible = _project(grid, upload(k, dev), upload(t, dev), image_size, ground_z,
                               max_range)
        hit = (uv, visible, visible.sum())
        if len(_PROJECTION_CACHE) >= 8:
            _PROJECTION_CACHE.pop(next(iter(_PROJECTION_CACHE)))
        _PROJECTION_CACHE[key] = hit
    return hit


_PROJECTION_CACHE: dict = {}


@functools.lru_cache(maxsize=8)
def _ground_points(grid: BevGrid, ground_z: float, device: torch.device) -> Tensor:
    """[HW, 3] float64 cell centres on the ground plane z = ground_z (made once per grid and device)."""
    c = grid.cell_centers(device).permute(1, 2, 0).reshape(-1, 2).double()  # [HW, 2]
    return torch.cat([c, torch.full((c.shape[0], 1), float(ground_z), dtype=torch.float64, device=device)], 1)


def _project(grid: BevGrid, k: Tensor, t: Tensor, image_size, ground_z: float, max_range: float):
    h_img, w_img = image_size
    p = _ground_points(grid, float(ground_z), k.device)
    pc = (p - t[:3, 3]) @ t[:3, :3]  # [HW, 3] in the optical frame: R^T (p - t)
    z = pc[:, 2]
    uv = (pc @ k.T)[:, :2] / z.clamp_min(1e-6).unsqueeze(1)
    rng = torch.hypot(p[:, 0] - t[0, 3], p[:, 1] - t[1, 3])
    visible = (z > 0.3) & (uv[:, 0] >= 0) & (uv[:, 0] < w_img) & (uv[:, 1] >= 0) & (uv[:, 1] < h_img)
    visible &= rng < max_range
    return uv.float(), visible


def encode_camera(grid: BevGrid, image, K, T_base_camera, ground_z: float = 0.0,
                  max_range: float = 80.0, device=None, graphs: GraphCache | None = None) -> tuple[Tensor, dict]:
    """-> (features [len(CAMERA_CHANNELS), H, W] float32 on ``device``, stats). The image is
    area-downsampled on the host (integer sums, cheap; on a GPU on the device), uploaded small, and
    sampled on the device. With ``graphs`` (CUDA) the projection of the cells (the camera moves
    with the ego motion, so it changes every frame) and the sampling replay as one CUDA graph."""
    dev = as_device(device)
    h, w = grid.shape
    stats = {"camera_visible_cells": 0}
    if image is None:
        return torch.zeros(len(CAMERA_CHANNELS), h, w, device=dev), stats
    a = np.asarray(image)
    if a.ndim < 2 or a.shape[0] == 0 or a.shape[1] == 0:
        return torch.zeros(len(CAMERA_CHANNELS), h, w, device=dev), stats
    h_img, w_img = a.shape[:2]
    factor = max(1, h_img // _WORK_HEIGHT)
    if graphs is not None and graphs.pads(dev):
        k = np.asarray(K, dtype=np.float64).reshape(3, 3)
        t = np.asarray(T_base_camera, dtype=np.float64)
        if t.shape != (4, 4) or not np.isfinite(t).all() or not np.isfinite(k).all():
            raise ValueError("camera K must be 3x3 and T_base_camera a 4x4 transform, all finite")
        img = a[:, :, None] if a.ndim == 2 else a
        raw_in = img.ndim == 3 and img.shape[2] in (1, 3, 4) and img.dtype != np.uint16 and \
            img.shape[0] >= factor and img.shape[1] >= factor
        if raw_in:  # the raw image goes into the graph, reduced there (image_to_tensor's device way)
            hh, ww = img.shape[0] // factor, img.shape[1] // factor
            scale = {np.dtype(np.uint8): 1 / 255.0}.get(img.dtype, 1.0)
            src = upload(img[: hh * factor, : ww * factor, :3], dev)
            reduce = (factor, float(np.float32(scale / (factor * factor))), img.dtype.kind in "ui")
        else:  # (uint16 images are reduced on the host; odd shapes get image_to_tensor's error)
            src, reduce = image_to_tensor(a, factor, dev), None  # [1, 3, h, w]
        fn = functools.partial(_camera_graphed, grid=grid, image_size=(h_img, w_img), factor=factor,
                               ground_z=float(ground_z), max_range=float(max_range), reduce=reduce)
        feats, n_visible = graphs.run("camera", (grid, h_img, w_img, factor, float(ground_z), float(max_range),
                                                 reduce), fn, src, upload(k, dev), upload(t, dev))
    else:
        uv, visible, n_visible = project_cells(grid, K, T_base_camera, (h_img, w_img), ground_z, max_range, dev)
        feats = _camera_sample(image_to_tensor(a, factor, dev), uv, visible, factor)
    stats["camera_visible_cells"] = n_visible
    return feats.view(-1, h, w), stats


def _camera_graphed(small: Tensor, k: Tensor, t: Tensor, *, grid: BevGrid, image_size, factor: int, ground_z: float,
                    max_range: float, reduce=None):
    """Projection + sampling from device tensors (float64 K and T): a pure tensor function (CUDA graph).
    ``reduce`` (factor, scale, integer): ``small`` is the raw HWC image, reduced here first."""
    if reduce is not None:
        small = reduce_on_device(small, *reduce)
    uv, visible = _project(grid, k, t, image_size, ground_z, max_range)
    return _camera_sample(small, uv, visible, factor), visible.sum()


def _camera_sample(small: Tensor, uv: Tensor, visible: Tensor, factor: int) -> Tensor:
    """The reduced image [1, 3, h, w] sampled at the cells' pixels -> CAMERA_CHANNELS x [H*W]."""
    dev = small.device
    feats = torch.zeros(len(CAMERA_CHANNELS), uv.shape[0], device=dev)
    hc, wc = small.shape[2] * factor, small.shape[3] * factor  # pixels covered (crop to a multiple)
    gray = small.mean(1, keepdim=True)  # [1, 1, h, w]
    grad = sobel_magnitude(gray)
    src = torch.cat([small, grad], 1)  # [1, 4, h, w]
    # Pixel coordinates -> grid_sample's [-1, 1] (align_corners=False): resolution independent.
    norm = torch.stack([(uv[:, 0] + 0.5) / wc * 2 - 1, (uv[:, 1] + 0.5) / hc * 2 - 1], 1)
    norm = torch.where(visible.unsqueeze(1), norm, torch.zeros_like(norm))
    sampled = F.grid_sample(src, norm.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                            align_corners=False)[0, :, 0]
    vis = visible.float()
    feats[0] = 1.0
    feats[1:4] = (sampled[:3] - 0.5) * vis
    feats[4] = sampled[3] * vis
    feats[5] = vis
    return feats


def sobel_magnitude(gray: Tensor) -> Tensor:
    """|Sobel gradient| / 8 of gray [1, 1, h, w] (replicated border) -> [1, 1, h, w]: the separable
    form (differences of shifted views, then the 1-2-1 smoothing), the same sums as a 3x3 conv2d up
    to float rounding (~1e-7) at a fraction of its cost on one CPU core (the 2-output-channel conv
    took 2-6 ms for a 384 x 640 image there, this ~1 ms); any device, graph-capturable."""
    p = F.pad(gray, (1, 1, 1, 1), mode="replicate")[0, 0]  # [h + 2, w + 2]
    dx = p[:, 2:] - p[:, :-2]  # [h + 2, w]
    dy = p[2:] - p[:-2]  # [h, w + 2]
    gx = (dx[:-2] + 2.0 * dx[1:-1] + dx[2:]) / 8.0
    gy = (dy[:, :-2] + 2.0 * dy[:, 1:-1] + dy[:, 2:]) / 8.0
    return torch.hypot(gx, gy)[None, None]

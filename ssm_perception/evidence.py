"""Direct evidence of the current scan, the rule check against it, and the published grids.

Evidence: a cell with at least ``evidence.min_returns`` LiDAR returns of the current (deskewed)
scan between ``min_height_m`` and ``max_height_m`` above the fitted ground. The counts are the
LiDAR encoder's own per-height-bin counts (its ``lidar_hbin_*`` channels hold log(1 + count)), so
the evidence is computed once, by the encoder, and read back here.

Rule check: the published grid never calls such a cell free; the network may add occupancy
(occluded structure, predicted motion) but not erase what the LiDAR sees. How often the network
(before the rule) calls evidence cells free is the disagreement rate, a health signal: a network
that ignores walls is out of its training distribution (another LiDAR, weather, a scene it never
saw), and its inference elsewhere deserves no more trust than its agreement with evidence.

``published_grids`` is the one place that turns a frame's outputs into the int8 values the node
publishes; ``evaluate`` scores exactly those values (``decode_occupancy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ssm_perception.bev.device import constant
from ssm_perception.bev.features import channel_index
from ssm_perception.bev.lidar import HEIGHT_BIN_EDGES
from ssm_perception.config import EvidenceConfig

OCCUPIED_THRESHOLD = 0.5  # published occupied means P > 0.5 (value > 50); 50 itself is "do not know"
UNKNOWN = -1
OBSERVED_NOW = 100
INFERRED = 0  # observation grid: no direct range observation since the last reset


@dataclass
class EvidenceGrids:
    """Per-cell counts of the current scan, [H, W] (H along x), from the LiDAR encoder's features."""

    band_count: np.ndarray  # int32: returns in the configured height band above ground
    nonground_count: np.ndarray  # int32: returns above the encoder's ground threshold, any height
    free_now: np.ndarray  # bool: a LiDAR ray passed through the cell this scan (no obstacle return)
    direct_now: np.ndarray  # bool: LiDAR return or ray, or a radar return, in this scan

    def evidence(self, cfg: EvidenceConfig) -> np.ndarray:
        return self.band_count >= cfg.min_returns


def band_bins(cfg: EvidenceConfig) -> list[str]:
    """Names of the encoder's height-bin channels that make up the evidence band."""
    edges = (-math.inf, *HEIGHT_BIN_EDGES, math.inf)
    out = []
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        if lo >= cfg.min_height_m - 1e-6 and hi <= cfg.max_height_m + 1e-6:
            out.append(f"lidar_hbin_{k}")
    return out


def evidence_channels(cfg: EvidenceConfig) -> list[str]:
    """The feature channels ``evidence_grids`` reads (a device pipeline copies only these to the host)."""
    return [*band_bins(cfg), "lidar_nonground", "lidar_free", "lidar_log_count", "radar_log_count"]


def direct_now(features: Tensor) -> Tensor:
    """[H, W] bool on the features' device: a LiDAR return or ray, or a radar return, in this scan."""
    f = features
    return (f[channel_index("lidar_log_count")] > 0) | (f[channel_index("lidar_free")] > 0.5) \
        | (f[channel_index("radar_log_count")] > 0)


def evidence_planes(features: Tensor, cfg: EvidenceConfig) -> Tensor:
    """``evidence_grids`` computed where the features are: [4, H, W] float32 planes (band count,
    non-ground count, free now, direct now; counts are exact integers), for a pipeline that reads
    them back with its frame's one copy; ``grids_from_planes`` makes the EvidenceGrids on the host."""
    names = evidence_channels(cfg)
    f = features.index_select(0, constant(tuple(channel_index(n) for n in names), torch.long, features.device))
    nb = len(names) - 4

    def counts(x: Tensor) -> Tensor:  # as evidence_grids: expm1 in float64, rounded per channel, summed
        return torch.round(torch.expm1(x.double())).sum(0).float()

    band = counts(f[:nb]) if nb else torch.zeros_like(f[0])
    free = f[nb + 1] > 0.5
    direct = (f[nb + 2] > 0) | free | (f[nb + 3] > 0)
    return torch.stack([band, counts(f[nb : nb + 1]), free.float(), direct.float()])


def grids_from_planes(planes: np.ndarray) -> EvidenceGrids:
    """[4, H, W] host planes of ``evidence_planes`` -> EvidenceGrids (equal to ``evidence_grids``)."""
    return EvidenceGrids(band_count=np.rint(planes[0]).astype(np.int32), nonground_count=np.rint(planes[1]).astype(np.int32),
                         free_now=planes[2] > 0.5, direct_now=planes[3] > 0.5)


def evidence_grids(features: Tensor, cfg: EvidenceConfig, channels: list[str] | None = None) -> EvidenceGrids:
    """features [C, H, W] (bev.features layout; on any device: only the channels needed come to the
    host) -> the current scan's evidence grids. ``channels``: ``features`` holds only these channels,
    in this order (``evidence_channels(cfg)``, as the pipeline reads them back)."""
    names = evidence_channels(cfg)
    if channels is None:
        f = features[[channel_index(n) for n in names]].cpu()
    else:
        f = features.cpu()[[channels.index(n) for n in names]]
    nb = len(names) - 4

    def counts(rows) -> np.ndarray:  # the inverse of log1p, rounded, is exact: the encoder stores integer counts
        return np.rint(np.expm1(f[rows].double().numpy())).astype(np.int32).sum(0)

    return EvidenceGrids(
        band_count=counts(list(range(nb))) if nb else np.zeros(f.shape[1:], dtype=np.int32),
        nonground_count=counts([nb]),
        free_now=(f[nb + 1] > 0.5).numpy(),
        direct_now=((f[nb + 2] > 0) | (f[nb + 1] > 0.5) | (f[nb + 3] > 0)).numpy(),
    )


@dataclass
class EvidenceReport:
    level: int  # 0 OK, 1 WARN, 2 ERROR (diagnostic_msgs levels)
    message: str
    evidence_cells: int  # cells with direct evidence this scan
    network_free: int  # of those, cells the network (before the rule) calls free
    disagreement: float | None  # network_free / evidence_cells this scan (None: too few evidence cells)
    disagreement_mean: float | None  # running mean (exponential, evidence.ema) over scans with a sample
    contradictions: int  # cells the scan sees through that the network calls occupied
    free_cells: int  # cells the scan sees through


class EvidenceCheck:
    """Running disagreement between the network and the current scan's evidence, with a level."""

    def __init__(self, cfg: EvidenceConfig):
        self.cfg = cfg
        self.mean: float | None = None

    def reset(self) -> None:
        self.mean = None

    def update(self, prob: np.ndarray, ev: EvidenceGrids) -> EvidenceReport:
        c = self.cfg
        evidence = ev.evidence(c)
        n_ev = int(evidence.sum())
        called_free = evidence & ~(prob > OCCUPIED_THRESHOLD)
        n_free = int(called_free.sum())
        rate = n_free / n_ev if n_ev >= c.min_cells else None
        if rate is not None:
            self.mean = rate if self.mean is None else (1 - c.ema) * self.mean + c.ema * rate
        contra = int((ev.free_now & (prob > OCCUPIED_THRESHOLD)).sum())
        level, msg = 0, "network agrees with the scan's evidence"
        if self.mean is None:
            msg = "no disagreement sample yet"
        elif self.mean >= c.disagreement_error:
            level, msg = 2, (f"network calls {100 * self.mean:.0f}% of cells with LiDAR evidence free: input out of "
                             "distribution? (evidence floor applied)")
        elif self.mean >= c.disagreement_warn:
            level, msg = 1, f"network calls {100 * self.mean:.0f}% of cells with LiDAR evidence free"
        return EvidenceReport(level, msg, n_ev, n_free, rate, self.mean, contra, int(ev.free_now.sum()))


# ------------------------------------------------------------------------------ published values
@dataclass
class PublishedGrids:
    """What the node publishes, int8 [H, W] in the grid layout (H along x; the ROS message is its
    transpose). occupancy: 0..100 = round(100 P) (51 at least for P > 0.5, 49 at most for P < 0.5),
    -1 where the model has nothing. observation: 100
    observed by a range sensor in this scan, 1..99 observed earlier (age = (100 - v) * age_step_s),
    0 never observed since the last reset (the occupancy there is inferred), -1 as occupancy."""

    occupancy: np.ndarray
    observation: np.ndarray


def published_occupancy_prob(prob: np.ndarray, ev: EvidenceGrids | None, cfg: EvidenceConfig) -> np.ndarray:
    """The probability that gets published: the network's, with the evidence floor (and, with
    ``free_space: clear``, see-through cells capped at 0.5)."""
    p = np.asarray(prob, np.float32)
    if ev is None or not cfg.enabled:
        return p
    p = np.where(ev.evidence(cfg), np.maximum(p, cfg.floor), p)
    if cfg.free_space == "clear":
        p = np.where(ev.free_now & ~ev.evidence(cfg), np.minimum(p, OCCUPIED_THRESHOLD), p)
    return p


def published_grids(out, cfg: EvidenceConfig) -> PublishedGrids:
    """FrameOutputs -> the published int8 grids (the node's encoder and ``evaluate`` both call this)."""
    p = published_occupancy_prob(out.occupancy, out.evidence, cfg)
    p = np.clip(np.nan_to_num(p, nan=0.5), 0.0, 1.0)
    occ = np.rint(p * 100.0)
    # The encoding never flips the model's decision: P > 0.5 is at least 51 (occupied), P < 0.5 at
    # most 49; only P = 0.5 exactly is 50 ("do not know"). Plain rounding would publish a decayed
    # 0.503 as 50 and a planner would lose it.
    occ = np.where(p > OCCUPIED_THRESHOLD, np.maximum(occ, 51), np.where(p < OCCUPIED_THRESHOLD,
                                                                          np.minimum(occ, 49), occ)).astype(np.int8)
    unknown = np.asarray(out.unknown, bool) | ~np.isfinite(p)
    occ[unknown] = UNKNOWN
    age = out.direct_age_s
    if age is None:
        obs = np.zeros(occ.shape, np.int8)
    else:
        steps = np.ceil(np.nan_to_num(age, nan=np.inf, posinf=1e9) / cfg.age_step_s)
        obs = np.where(age <= 0.0, OBSERVED_NOW, np.clip(OBSERVED_NOW - steps, 1, OBSERVED_NOW - 1))
        obs = np.where(np.isfinite(age), obs, INFERRED).astype(np.int8)
    obs[unknown] = UNKNOWN
    return PublishedGrids(occ, obs)


def decode_occupancy(values: np.ndarray) -> np.ndarray:
    """Published int8 occupancy -> P as a planner reads it: value / 100, and -1 (unknown) as 0.5
    (no information: counted neither occupied, since occupied means P > 0.5, nor confidently free)."""
    v = np.asarray(values)
    return np.where(v < 0, 0.5, v.astype(np.float32) / 100.0).astype(np.float32)

"""Distribution shift of the LiDAR input (severe weather, a changed sensor), from scan statistics.

The design notes list distribution shift among the reasons to reset: a state built under one input
distribution carries confident memory that the new one no longer supports. Three statistics per scan,
cheap (one pass over the points) and independent of the sensor's absolute scale:

- near clutter share: fraction of returns that lie closer than ``near_range_m`` to the LiDAR *and*
  alone in their ``clutter_voxel_m`` voxel (rain, snow, fog and spray intercept beams close to the
  sensor at random ranges; a surface, even a wall or a truck right beside the car, returns many
  points per voxel at that range, so approaching structure does not count);
- return count: fog and heavy rain absorb long-range returns, a blocked or changed sensor changes it;
- median log(1 + intensity): attenuation in fog/rain, or a driver that changed its intensity scale.

Each is compared with a running reference learned from the first ``warmup_frames`` scans (and then
followed slowly by healthy scans), so whatever the sensor's own scale is, only a *change* counts. A
change beyond its threshold for ``persist_frames`` scans in a row is a shift. After a shift the
reference is learned again from the new conditions, so a lasting fog gives one reset, not one per scan;
the end of the fog is a shift again (and may reset again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ssm_perception.config import DistributionShiftConfig


@dataclass
class ScanStats:
    returns: int  # finite returns
    near_share: float  # share of them that are near-range clutter (close to the sensor, isolated)
    intensity: float | None  # median log(1 + intensity); None without an intensity field


def scan_stats(points, near_range_m: float, voxel_m: float = 0.3) -> ScanStats | None:
    """Statistics of a structured cloud in the sensor frame (None for an empty/unusable one)."""
    names = getattr(getattr(points, "dtype", None), "names", None)
    if points is None or names is None or not {"x", "y", "z"} <= set(names) or len(points) == 0:
        return None
    x, y, z = (np.asarray(points[f], np.float32) for f in ("x", "y", "z"))
    r2 = x * x + y * y + z * z
    ok = np.isfinite(r2) & (r2 > 1e-6)  # (0, 0, 0) is how many drivers mark "no return"
    n = int(ok.sum())
    if n == 0:
        return None
    close = ok & (r2 < near_range_m * near_range_m)
    near = 0.0
    if close.any():
        # Isolated returns: alone in their voxel (one sort of the near points, a few ms per scan).
        span = int(2 * near_range_m / voxel_m) + 3
        kt = np.int32 if (2 * span) ** 3 < 2**31 else np.int64  # int32 keys sort faster (hot path)
        key = None
        for a in (x, y, z):  # ((vx + span) * 2 span + (vy + span)) * 2 span + (vz + span)
            v = np.floor(a[close] / voxel_m).astype(kt) + kt(span)
            key = v if key is None else key * kt(2 * span) + v
        _, counts = np.unique(key, return_counts=True)
        near = float(np.count_nonzero(counts == 1)) / n
    inten = None
    if "intensity" in names:
        i = np.asarray(points["intensity"], np.float32)[ok]
        i = i[np.isfinite(i)]
        if i.size:
            inten = _median_log1p(i)
    return ScanStats(n, near, inten)


def _median_log1p(i: np.ndarray) -> float:
    """``np.median(np.log1p(np.clip(i, 0, None)))`` of finite float32 values, bit for bit, without
    mapping every value: clip and log1p are monotone, so the middle order statistics of the mapped
    values are the mapped middle order statistics; only those (one or two) are mapped and averaged
    as np.median does (float32 mean). Half the cost on a 50k-point scan (hot path of every frame)."""
    n = i.size
    k = n // 2
    mid = np.partition(i, k)[k:k + 1] if n % 2 else np.partition(i, [k - 1, k])[k - 1:k + 1]
    return float(np.mean(np.log1p(np.clip(mid, 0.0, None))))


@dataclass
class ShiftReport:
    level: int  # 0 OK, 1 WARN (shift detected or persisting), diagnostic_msgs levels
    message: str
    detected: bool  # True on the scan where a shift is declared (the reset, if configured, follows)
    stats: ScanStats | None
    reference: dict = field(default_factory=dict)  # the running reference (empty while learning)
    changes: dict = field(default_factory=dict)  # statistic -> change against the reference
    shifts: int = 0  # shifts detected since start


class ShiftDetector:
    def __init__(self, cfg: DistributionShiftConfig):
        self.cfg = cfg
        self.shifts = 0
        self._last_detected_msg = ""
        self.restart()

    def restart(self) -> None:
        """Learn the reference again from the next scans (after a shift or a full reset)."""
        self._samples: list[ScanStats] = []
        self.reference: dict | None = None
        self._streak = 0

    def update(self, points) -> ShiftReport:
        c = self.cfg
        st = scan_stats(points, c.near_range_m, c.clutter_voxel_m) if c.enabled else None
        if st is None:
            return ShiftReport(0, "no LiDAR statistics this scan" if c.enabled else "disabled", False, None,
                               shifts=self.shifts)
        if self.reference is None:
            self._samples.append(st)
            if len(self._samples) >= c.warmup_frames:
                s = self._samples
                ints = [x.intensity for x in s if x.intensity is not None]
                self.reference = {"returns": float(np.median([x.returns for x in s])),
                                  "near_share": float(np.median([x.near_share for x in s])),
                                  "intensity": float(np.median(ints)) if len(ints) == len(s) else None}
            return ShiftReport(0, f"learning the reference ({len(self._samples)}/{c.warmup_frames} scans)", False,
                               st, shifts=self.shifts)
        ref = self.reference
        changes = {"near_share": st.near_share - ref["near_share"],
                   "returns": st.returns / max(ref["returns"], 1.0) - 1.0}
        if ref["intensity"] is not None and st.intensity is not None:
            changes["intensity"] = st.intensity - ref["intensity"]
        why = []
        if changes["near_share"] > c.near_share_delta:
            why.append(f"near-range clutter {100 * st.near_share:.1f}% of returns (reference "
                       f"{100 * ref['near_share']:.1f}%)")
        if abs(changes["returns"]) > c.return_rate_change:
            why.append(f"returns per scan {st.returns} (reference {ref['returns']:.0f})")
        if "intensity" in changes and abs(changes["intensity"]) > c.intensity_delta:
            why.append(f"median log intensity {st.intensity:.2f} (reference {ref['intensity']:.2f})")
        if not why:
            self._streak = 0
            for k in ("near_share", "returns"):  # follow slow drift with healthy scans only
                ref[k] = (1 - c.ema) * ref[k] + c.ema * (st.near_share if k == "near_share" else st.returns)
            if ref["intensity"] is not None and st.intensity is not None:
                ref["intensity"] = (1 - c.ema) * ref["intensity"] + c.ema * st.intensity
            return ShiftReport(0, "input statistics match the reference", False, st, dict(ref), changes,
                               self.shifts)
        self._streak += 1
        if self._streak < c.persist_frames:
            return ShiftReport(0, f"possible distribution shift ({self._streak}/{c.persist_frames} scans): "
                               + "; ".join(why), False, st, dict(ref), changes, self.shifts)
        self.shifts += 1
        msg = "distribution shift: " + "; ".join(why)
        report = ShiftReport(1, msg, True, st, dict(ref), changes, self.shifts)
        self.restart()
        return report

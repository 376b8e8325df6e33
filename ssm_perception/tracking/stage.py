"""Stage 7 of PerceptionPipeline.process: tracking in odom and the track rule, one function.

``PerceptionPipeline.track`` calls it, and so does scripts/bench_tracker.py, so the bench times the
code the node runs (detections base_link -> odom, ``MultiObjectTracker.update``,
``TrackSupportRule.apply``)."""

from __future__ import annotations

import numpy as np

from ssm_perception.tracking.detections import Detection, detections_to_odom_table
from ssm_perception.tracking.support import TrackSupportReport, TrackSupportRule
from ssm_perception.tracking.tracker import MultiObjectTracker, TrackState


def tracking_stage(tracker: MultiObjectTracker, rule: TrackSupportRule, detections_base: list[Detection],
                   T_odom_base: np.ndarray, stamp_s: float, nonground_count: np.ndarray | None,
                   band_count: np.ndarray | None = None
                   ) -> tuple[list[Detection], list[TrackState], list[TrackState], TrackSupportReport]:
    """(detections in odom, the tracker's live tracks, the published tracks, the rule's report).
    ``nonground_count``: the scan's [H, W] non-ground returns per cell, None without LiDAR;
    ``band_count``: its returns in the evidence height band (the rule's shape check; None: not run)."""
    detections_odom, table, cls = detections_to_odom_table(detections_base, T_odom_base)
    tracks = tracker.update_table(table, cls, stamp_s)  # = tracker.update(detections_odom, stamp_s)
    published, report = rule.apply(tracks, nonground_count, T_odom_base, stamp_s, band_count=band_count,
                                   table=tracker.output_table())
    return detections_odom, tracks, published, report

"""Issue 19 (item 3) over DDS: a bag replayed at 3x into a node far slower than its LiDAR.

The configuration is slow on purpose (the default 200x200 grid, the temporal model) and its reset
limits are tight (0.45 s): every processed frame is more than 0.45 s of bag time after the previous
one, so before this issue each of them reset the state as time_gap and sensor_dropout. Frames skipped
while busy are counted as such, the output status says "overloaded", and no gap or dropout reset
happens. Then node and replay get SIGTERM while frames flow: both exit 0 without a traceback."""

from __future__ import annotations

import signal
from itertools import pairwise

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from ros_helpers import (
    DIAGNOSTICS,
    GRID,
    NS,
    Listener,
    Proc,
    accounted_for,
    diag_values,
    reset_counts,
    start_node,
    start_replay,
    wait_for,
    write_synthetic_bag,
)

from ssm_perception.nodes.launcher import replay_command

pytestmark = pytest.mark.ros
GAP_S = 0.45  # > 3 LiDAR periods: best-effort DDS may lose a scan or two under this load
SLOW = {"grid.length_x": 100.0, "grid.length_y": 100.0, "reset.max_time_gap_s": GAP_S, "reset.sensor_dropout_s": GAP_S}


def test_slow_node_at_3x_skips_frames_without_resets_and_stops_cleanly(tmp_path):
    write_synthetic_bag(tmp_path / "bag", duration_s=6.0)
    lis = Listener("overload_listener", {GRID: OccupancyGrid, DIAGNOSTICS: DiagnosticArray})
    node = start_node(tmp_path, SLOW)
    replay = loop = None
    try:
        replay = start_replay(tmp_path / "bag", tmp_path / "replay.log", rate=3.0, lockstep="")
        assert replay.wait(90) == 0, replay.output()
        last = wait_for(lambda: accounted_for(lis), 30, "every received frame accounted for", node)
        diags = lis.get(DIAGNOSTICS)
        grids = lis.stamps(GRID)

        # SIGTERM while frames flow: a second pass of the bag keeps the worker busy.
        loop = Proc(replay_command(tmp_path / "bag", rate=3.0, loop=True, wait_subscribers_s=30.0, quiet=True),
                    tmp_path / "loop.log")
        n = len(grids)
        wait_for(lambda: len(lis.get(GRID)) > n, 60, "a grid from the second pass", node)
        node.p.send_signal(signal.SIGTERM)
        loop.p.send_signal(signal.SIGTERM)
        rc_node, rc_loop = node.wait(30), loop.wait(30)
    finally:
        for p in (node, replay, loop):
            if p is not None:
                p.stop()
        lis.close()

    out = diag_values(last, ": output")
    lidar = diag_values(last, ": sensor lidar")
    assert int(out["frames_dropped_busy"]) >= 1, out  # the node really was slower than the LiDAR
    assert len(grids) >= 2 and int(lidar["received"]) >= 30, (len(grids), lidar)
    assert any(b - a > GAP_S * NS for a, b in pairwise(grids)), grids  # gaps beyond the limit were processed
    counts = reset_counts(diags)
    assert counts.get("time_gap", 0) == 0 and counts.get("sensor_dropout", 0) == 0, counts
    assert counts.get("route_start") == 1, counts
    statuses = [s.message for d in diags for s in d.status if s.name.endswith(": output")]
    assert any(m.startswith("overloaded:") for m in statuses), statuses[-5:]

    assert rc_node == 0 and rc_loop == 0, (rc_node, rc_loop)
    for proc in (node, loop):
        text = proc.output()
        assert "Traceback" not in text and "context is invalid" not in text, text[-3000:]
    assert "shutting down:" in node.output() and "stopped by a signal" in loop.output()

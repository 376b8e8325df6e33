"""Issue 16 item 6: the same bag gives bit-identical grids and tracks, every time.

Offline: the pipeline over `decode_bag` twice, the second time in a fresh process with another
hash seed (string-keyed set/dict order) and another OpenMP thread count. Over DDS: two fresh
node processes, each fed the bag by `ssm-perception replay` in lockstep; every published grid and
track array is bit-identical between them, and equal to what the offline path encodes for the same
frames (io.ros_convert.frame_messages), so what is evaluated offline is what the node publishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ros_helpers import (
    GRID,
    ROOT,
    TEST_OVERRIDES,
    Listener,
    replay,
    running_node,
    wait_for,
    write_synthetic_bag,
)

from ssm_perception.config import PerceptionConfig

pytestmark = pytest.mark.ros
DURATION_S = 1.2


def node_config() -> PerceptionConfig:
    flat = PerceptionConfig().to_ros_parameters()
    flat.update(TEST_OVERRIDES)
    return PerceptionConfig.from_ros_parameters(flat)


def offline_outputs(bag: str) -> list[dict]:
    """Per frame: the published grid values and the track array's numbers (as the node encodes them)."""
    from ssm_perception.eval.evaluate import decode_bag, topic_roles
    from ssm_perception.io.ros_convert import frame_messages
    from ssm_perception.pipeline import PerceptionPipeline

    cfg = node_config()
    decoded = decode_bag(bag, cfg, topic_roles(cfg.topics), progress=False)
    pipe = PerceptionPipeline(cfg)
    out = []
    for inp in decoded.frames:
        grid, observation, tracks, _ = frame_messages(pipe.process(inp), cfg)
        out.append({"stamp": inp.stamp_ns, "grid": _hex(grid), "observation": _hex(observation),
                    "tracks": track_numbers(tracks)})
    return out


def _hex(grid_msg) -> str:
    return np.asarray(grid_msg.data, np.int8).tobytes().hex()


def track_numbers(msg) -> list:
    """Every number of a TrackArray that a planner reads (track number, classes, pose, twist, shape,
    covariances); not the UUIDs, which are random per track (uuid4) and so differ between processes."""
    f32 = np.float32  # float32 fields of Track.msg: DDS rounds them, an unsent message still holds doubles
    rows = []
    for t in msg.tracks:
        p, v, d = t.pose.pose, t.twist.twist, t.shape.dimensions
        rows.append([int(t.track_number), *[x for c in t.classification for x in (int(c.label), float(f32(c.probability)))],
                     int(t.status), float(f32(t.existence_probability)), p.position.x, p.position.y, p.position.z,
                     p.orientation.z, p.orientation.w, v.linear.x, v.linear.y, v.angular.z, d.x, d.y, d.z,
                     *[x for q in t.shape.footprint.points for x in (float(f32(q.x)), float(f32(q.y)))],
                     *map(float, t.pose.covariance), *map(float, t.twist.covariance), float(f32(t.age)),
                     float(f32(t.time_since_update))])
    return rows


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("determinism") / "bag"
    write_synthetic_bag(path, duration_s=DURATION_S, speed_mps=8.0)
    return path


def test_offline_replay_is_bit_identical_across_processes(bag, tmp_path):
    first = offline_outputs(str(bag))
    assert len(first) >= 12 and any(f["tracks"] for f in first)  # a non-trivial run
    code = ("import json, sys; sys.path.insert(0, 'test'); import test_determinism as t; "
            f"print(json.dumps(t.offline_outputs({str(bag)!r})))")
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == first


def _node_run(bag, tmp_path, name: str) -> list[dict]:
    from nav_msgs.msg import OccupancyGrid
    from ssm_perception.msg import TrackArray

    from ssm_perception.io.ros_convert import stamp_to_ns as ns

    run_dir = tmp_path / name
    run_dir.mkdir()
    listener = Listener(f"determinism_{name}", {GRID: OccupancyGrid, "/perception/tracks": TrackArray,
                                                "/perception/observation": OccupancyGrid})
    with running_node(run_dir, listener) as node:
        replay(bag, run_dir / "replay.log", 120, lockstep_timeout_s=10.0)
        n = int(DURATION_S * 10) + 1
        wait_for(lambda: len(listener.get("/perception/tracks")) >= n, 20, "every frame's tracks", node)
        wait_for(lambda: len(listener.get("/perception/observation")) >= n, 20, "every frame's observation", node)
        grids = listener.get(GRID)
        tracks = listener.get("/perception/tracks")
        observations = listener.get("/perception/observation")
    assert node.stop() == 0, node.output()[-3000:]

    by_stamp = {ns(t.header.stamp): track_numbers(t) for t in tracks}
    obs = {ns(o.header.stamp): _hex(o) for o in observations}
    return [{"stamp": ns(g.header.stamp), "grid": _hex(g), "observation": obs.get(ns(g.header.stamp)),
             "tracks": by_stamp.get(ns(g.header.stamp))} for g in grids]


def test_node_over_dds_in_lockstep_is_bit_identical_and_equals_offline(bag, tmp_path):
    first = _node_run(bag, tmp_path, "a")
    second = _node_run(bag, tmp_path, "b")
    assert len(first) == int(DURATION_S * 10) + 1
    assert [f["stamp"] for f in second] == [f["stamp"] for f in first]
    for a, b in zip(first, second, strict=True):
        assert a == b, f"frame at {a['stamp']}: the two replays differ"
    assert first == offline_outputs(str(bag))  # what evaluate scores is what the node publishes

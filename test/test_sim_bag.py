"""Simulated bags: topics/types/counts/rates, TF chain vs ground truth, adversities exactly where
configured (and nowhere else), byte-identical determinism, CLI errors, no partial bags."""

import itertools
import json
import math
from collections import defaultdict

import numpy as np
import pytest
from typer.testing import CliRunner

from ssm_perception.geometry import make_transform, se2_matrix
from ssm_perception.io.bag import bag_custom_data, bag_topics, read_messages
from ssm_perception.io.pointcloud2 import cloud_to_array
from ssm_perception.sim.config import ScenarioConfig
from ssm_perception.sim.scenario import Scenario
from ssm_perception.sim.writer import bag_topic_types, write_bag

LIDAR, RADAR = "/sensing/lidar/points", "/sensing/radar/points"
IMAGE, INFO = "/sensing/camera/front/image_raw", "/sensing/camera/front/camera_info"
SENSOR_TOPIC = {"lidar": LIDAR, "radar": RADAR, "camera": IMAGE}


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _T(tr) -> np.ndarray:
    t, q = tr.translation, tr.rotation
    return make_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def _load(path):
    """{topic: [(bag_ns, msg)]} in bag order."""
    out = defaultdict(list)
    for topic, _, t, msg in read_messages(path):
        out[topic].append((t, msg))
    return out


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    sc = Scenario.from_preset("adversity_mix", seed=2, duration_s=4.0)
    path = write_bag(sc, tmp_path_factory.mktemp("mix") / "bag", progress=False)
    return sc, path, _load(path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    sc = Scenario.from_preset("urban", seed=4, duration_s=1.5)
    d = tmp_path_factory.mktemp("clean")
    # same bag name in two places: rosbag2 names the storage file after the bag directory
    (d / "a").mkdir()
    (d / "b").mkdir()
    write_bag(sc, d / "a" / "bag", progress=False)
    write_bag(Scenario.from_preset("urban", seed=4, duration_s=1.5), d / "b" / "bag", progress=False)
    return sc, d, _load(d / "a" / "bag")


def test_topics_types_counts_rates(clean):
    sc, d, msgs = clean
    topics = bag_topics(d / "a" / "bag")
    assert {t: ty for t, (ty, _) in topics.items()} == bag_topic_types()
    counts = {t: c for t, (_, c) in topics.items()}
    assert counts[LIDAR] == 15 and counts[RADAR] == 23 and counts[IMAGE] == counts[INFO] == 19
    assert counts["/tf"] == counts["/odom"] == 75 and counts["/tf_static"] == 1
    for gt in ("/ground_truth/occupancy", "/ground_truth/dynamic", "/ground_truth/visibility",
               "/ground_truth/objects", "/ground_truth/ego_pose"):
        assert counts[gt] == counts[LIDAR]
    assert counts["/ground_truth/scenario"] == 1 and counts["/vehicle/zone"] == 1
    for topic, hz in ((LIDAR, 10.0), (RADAR, 15.0), (IMAGE, 12.5), ("/tf", 50.0)):
        stamps = [_ns(m.header.stamp if topic != "/tf" else m.transforms[0].header.stamp) for _, m in msgs[topic]]
        assert np.allclose(np.diff(stamps) / 1e9, 1.0 / hz, atol=1e-6), topic
    # bag time = stamp + the sensor's latency
    for topic, lat in ((LIDAR, sc.config.lidar.latency_s), (RADAR, sc.config.radar.latency_s),
                       (IMAGE, sc.config.camera.latency_s)):
        assert all(abs(t - _ns(m.header.stamp) - lat * 1e9) <= 1 for t, m in msgs[topic])
    # metadata and the scenario topic carry the config and seed
    meta = bag_custom_data(d / "a" / "bag")
    assert meta["ssm_perception.seed"] == "4"
    cfg = ScenarioConfig.from_yaml_text(msgs["/ground_truth/scenario"][0][1].data)
    assert cfg == sc.config
    # sensor content
    cloud = cloud_to_array(msgs[LIDAR][0][1])
    assert cloud.dtype.names == ("x", "y", "z", "intensity", "t", "ring") and len(cloud) > 20_000
    img = msgs[IMAGE][0][1]
    assert (img.width, img.height, img.encoding) == (640, 384, "rgb8")
    info = msgs[INFO][0][1]
    assert info.k[0] > 0 and info.header.frame_id == "camera_front_optical"
    # ground-truth objects: odom frame, the frame's objects, status = observed (1) or hidden (2)
    fr = next(sc.frames(with_others=False))
    tracks = msgs["/ground_truth/objects"][0][1].tracks
    assert [t.track_number for t in tracks] == fr.objects_odom["id"].tolist()
    assert [t.status for t in tracks] == [1 if n > 0 else 2 for n in fr.objects_odom["num_points"]]
    np.testing.assert_allclose([t.pose.pose.position.x for t in tracks], fr.objects_odom["x"], atol=1e-9)
    assert 1 in {t.status for t in tracks} and 2 in {t.status for t in tracks}
    grid = msgs["/ground_truth/occupancy"][0][1]
    assert (grid.info.width, grid.info.height, grid.header.frame_id) == (200, 200, "base_link")
    assert set(np.unique(grid.data)) <= {0, 100}


def test_tf_chain_matches_ground_truth(mix):
    sc, _, msgs = mix
    jump_map = next(a for a in sc.config.adversities if a.type == "localization_jump" and a.frame == "map")
    J = se2_matrix(*jump_map.offset)
    static = {tr.child_frame_id: _T(tr.transform) for tr in msgs["/tf_static"][0][1].transforms}
    for fid, T in sc.T_base_sensor.items():
        np.testing.assert_allclose(static[fid], T, atol=1e-9)
    for _, m in msgs["/tf"]:
        tf = {(tr.header.frame_id, tr.child_frame_id): tr for tr in m.transforms}
        t_s = (_ns(m.transforms[0].header.stamp) - sc.start_ns) / 1e9
        T_mb = _T(tf[("map", "odom")].transform) @ _T(tf[("odom", "base_link")].transform)
        truth = sc.T_world_base(t_s)
        expected = J @ truth if t_s >= jump_map.start_s else truth
        np.testing.assert_allclose(T_mb, expected, atol=1e-6)
    # /ground_truth/ego_pose (true pose, map) and /odom agree with the frames
    odom = {_ns(m.header.stamp): m for _, m in msgs["/odom"]}
    for _, m in msgs["/ground_truth/ego_pose"]:
        t_s = (_ns(m.header.stamp) - sc.start_ns) / 1e9
        p = m.pose.pose.position
        np.testing.assert_allclose([p.x, p.y], sc.T_world_base(t_s)[:2, 3], atol=1e-6)
        if _ns(m.header.stamp) in odom:
            q = odom[_ns(m.header.stamp)].pose.pose.position
            np.testing.assert_allclose([q.x, q.y], sc.T_odom_base(t_s)[:2, 3], atol=1e-6)


def _sensor_stamps(msgs, topic):
    return [(t, _ns(m.header.stamp)) for t, m in msgs[topic]]


def _in(t_ns, sc, a, pad=0.0):
    t = (t_ns - sc.start_ns) / 1e9
    return a.start_s - pad <= t < a.end_s + pad


def test_adversities_at_their_configured_times(mix):
    sc, _, msgs = mix
    cfg = sc.config
    adv = cfg.adversities
    events = [json.loads(m.data) for _, m in msgs["/ground_truth/events"]]
    assert [e["type"] for e in sorted(events, key=lambda e: e["index"])] == [a.type for a in adv]
    for e, (t, _) in zip(events, msgs["/ground_truth/events"], strict=True):
        assert t == e["start_ns"] == sc.ns(adv[e["index"]].start_s)
    for a in adv:
        if a.type == "dropout":
            for sensor in ("lidar", "radar", "camera"):
                stamps = [s for _, s in _sensor_stamps(msgs, SENSOR_TOPIC[sensor])]
                inside = [s for s in stamps if _in(s, sc, a)]
                period = 1.0 / getattr(cfg, sensor).rate_hz
                if sensor in a.sensors:
                    assert not inside
                    assert any(_in(s, sc, a, pad=period + 1e-3) for s in stamps)  # present right around it
                else:
                    assert inside or a.duration_s < period
        elif a.type == "time_gap":
            for topic in (LIDAR, RADAR, IMAGE, "/tf", "/odom"):
                stamps = [_ns(m.header.stamp) if topic != "/tf" else _ns(m.transforms[0].header.stamp)
                          for _, m in msgs[topic]]
                assert not [s for s in stamps if _in(s, sc, a)], topic
        elif a.type == "localization_jump":
            # the jumping transform steps once, at the configured time; the other part of the
            # chain (odom->base_link for a map jump, map->base_link for an odom jump) stays smooth
            jumping = ("map", "odom") if a.frame == "map" else ("odom", "base_link")
            smooth = ("odom", "base_link") if a.frame == "map" else ("map", "base_link")
            big = [t for t, d in _tf_steps(msgs, jumping, sc) if d > 1.0]
            assert any(abs(t - a.start_s) < 0.021 for t in big), big
            jumps_of_this_kind = [b.start_s for b in adv if b.type == a.type and
                                  (b.frame == a.frame or a.frame == "map")]
            assert all(any(abs(t - j) < 0.021 for j in jumps_of_this_kind) for t in big), big
            assert all(d < 0.5 for t, d in _tf_steps(msgs, smooth, sc) if abs(t - a.start_s) < 0.05)
        elif a.type == "nan_points":
            for sensor in a.sensors:
                n_bad_inside = 0
                for _, m in msgs[SENSOR_TOPIC[sensor]]:
                    arr = cloud_to_array(m)
                    bad = ~(np.isfinite(arr["x"]) & np.isfinite(arr["y"]) & np.isfinite(arr["z"]))
                    assert m.is_dense == (not bad.any())
                    if _in(_ns(m.header.stamp), sc, a):
                        n_bad_inside += int(bad.sum())
                        if sensor == "lidar":  # ~50k points: every scan in the window has some
                            assert bad.mean() == pytest.approx(a.fraction, rel=0.2)
                    else:
                        assert not bad.any(), sensor
                assert n_bad_inside > 0, sensor
        elif a.type == "stamp_jitter":
            for sensor in a.sensors:
                rate = getattr(cfg, sensor).rate_hz
                for _, s in _sensor_stamps(msgs, SENSOR_TOPIC[sensor]):
                    t = (s - sc.start_ns) / 1e9
                    off = abs(t * rate - round(t * rate)) / rate
                    if off > 1e-6:
                        k = round(t * rate)
                        assert a.active(k / rate) and off <= a.jitter_s + 1e-9
        elif a.type == "out_of_order":
            for sensor in a.sensors:
                seq = _sensor_stamps(msgs, SENSOR_TOPIC[sensor])
                # the late message (smaller stamp, arriving after a newer one) is inside the window
                swapped = [s2 for (_, s1), (_, s2) in itertools.pairwise(seq) if s2 < s1]
                assert swapped and all(_in(s, sc, a) for s in swapped), sensor
        elif a.type == "clutter":
            near = {True: [], False: []}
            for _, m in msgs[LIDAR]:
                arr = cloud_to_array(m)
                r = np.sqrt(arr["x"] ** 2 + arr["y"] ** 2 + arr["z"] ** 2)
                near[_in(_ns(m.header.stamp), sc, a)].append(int(((r < 8) & (arr["intensity"] < 4)).sum()))
            assert min(near[True]) > 10 * max(near[False]) + 100
        elif a.type == "zone_change":
            zones = [(t, m.data) for t, m in msgs["/vehicle/zone"]]
            assert zones == [(sc.start_ns, cfg.zone), (sc.ns(a.start_s), a.zone)]


def _tf_steps(msgs, key, sc):
    """(time, translation step) between consecutive /tf samples of one transform (or of the
    composite map -> base_link)."""
    out, prev = [], None
    for _, m in msgs["/tf"]:
        tf = {(tr.header.frame_id, tr.child_frame_id): _T(tr.transform) for tr in m.transforms}
        tf[("map", "base_link")] = tf[("map", "odom")] @ tf[("odom", "base_link")]
        T = tf[key]
        t = (_ns(m.transforms[0].header.stamp) - sc.start_ns) / 1e9
        if prev is not None and t - prev[0] < 0.03:
            out.append((t, float(np.linalg.norm(T[:2, 3] - prev[1][:2, 3]))))
        prev = (t, T)
    return out


def test_clean_scenario_has_no_adversity(clean):
    sc, _, msgs = clean
    assert not msgs["/ground_truth/events"]
    for sensor, topic in SENSOR_TOPIC.items():
        seq = _sensor_stamps(msgs, topic)
        rate = getattr(sc.config, sensor).rate_hz
        stamps = [s for _, s in seq]
        assert stamps == sorted(stamps)  # no out-of-order
        assert np.allclose((np.array(stamps) - sc.start_ns) / 1e9 * rate, np.arange(len(stamps)), atol=1e-6)
    for _, m in msgs[LIDAR] + msgs[RADAR]:
        arr = cloud_to_array(m)
        assert m.is_dense and np.isfinite(arr["x"]).all() and np.isfinite(arr["z"]).all()
    for key in (("map", "odom"), ("odom", "base_link")):
        assert max(d for _, d in _tf_steps(msgs, key, sc)) < 0.5
    assert [m.data for _, m in msgs["/vehicle/zone"]] == ["urban"]


def test_same_seed_gives_byte_identical_bags(clean):
    _, d, _ = clean
    files_a = sorted(p.relative_to(d / "a") for p in (d / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(d / "b") for p in (d / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2
    for f in files_a:
        assert (d / "a" / f).read_bytes() == (d / "b" / f).read_bytes(), f


def test_sqlite3_storage_is_deterministic_too(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_bag(Scenario.from_preset("parking", seed=1, duration_s=0.25), tmp_path / name / "bag",
                  storage="sqlite3", progress=False)
    for f in ("bag/bag.db3", "bag/metadata.yaml"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert bag_topics(tmp_path / "a" / "bag")[LIDAR][1] == 3


def test_failure_leaves_no_partial_bag(tmp_path, monkeypatch):
    sc = Scenario.from_preset("urban", seed=0, duration_s=0.5)

    def boom(m):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(sc, "camera_frame", boom)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_bag(sc, tmp_path / "bag", progress=False)
    assert not (tmp_path / "bag").exists()


def test_cli(tmp_path):
    from ssm_perception.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["simulate", "--scenario", "mars", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown scenario preset 'mars'" in res.output and "highway" in res.output
    (tmp_path / "file").write_text("")
    res = runner.invoke(app, ["simulate", "--scenario", "demo", "-d", "0.2", "-o", str(tmp_path / "file" / "bag")])
    assert res.exit_code == 2 and "is not a directory" in res.output
    assert not (tmp_path / "file" / "bag").exists()
    res = runner.invoke(app, ["simulate", "-s", "urban", "--seed", "3", "-d", "0.3", "--no-progress", "-o",
                              str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert bag_topics(tmp_path / "ok")[LIDAR][1] == 3
    res = runner.invoke(app, ["simulate", "-s", "demo", "-d", "0.3", "-o", str(tmp_path / "ok")])
    assert res.exit_code == 2 and "already exists" in res.output
    assert math.isclose(ScenarioConfig.from_yaml_text(bag_custom_data(tmp_path / "ok")["ssm_perception.scenario"])
                        .duration_s, 0.3)

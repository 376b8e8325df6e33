"""`ssm-perception evaluate` on tiny simulated bags: metrics.json + report.md + PNGs, the no-ground-truth
path on a bag written by another tool layout (sqlite3, renamed LiDAR topic), and the unknown-topic message."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ssm_perception.config import GridConfig, PerceptionConfig

GRID = GridConfig(length_x=32.0, length_y=32.0, resolution=1.0)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    from ssm_perception.io.bag import BagWriter, bag_topics, read_messages
    from ssm_perception.model import BevPerceptionModel, save_checkpoint
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    d = tmp_path_factory.mktemp("eval")
    sc = Scenario.from_preset("adversity_mix", seed=5, duration_s=2.2, grid=GRID)
    sim_bag = write_bag(sc, d / "sim", progress=False)
    # A "foreign" bag: sqlite3, LiDAR on another topic, no ground truth, no radar/camera.
    foreign = d / "foreign"
    keep = {"/sensing/lidar/points": "/velodyne_points", "/tf": "/tf", "/tf_static": "/tf_static"}
    contents = bag_topics(sim_bag)
    with BagWriter(foreign, storage="sqlite3") as w:
        for src, dst in keep.items():
            w.add_topic(dst, contents[src][0], latched=dst == "/tf_static")
        for topic, _, t, msg in read_messages(sim_bag, list(keep)):
            w.write(keep[topic], t, msg)
    cfg = PerceptionConfig.model_validate({
        "grid": GRID.model_dump(), "sensors": {"use_camera": False},
        "model": {"kind": "mamba", "d_model": 8, "d_state": 4, "headdim": 4, "allow_untrusted_weights": True},
    })
    cfg_path = d / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    ckpt = d / "tiny.safetensors"
    save_checkpoint(BevPerceptionModel(cfg), ckpt, {"note": "untrained, for the test"})
    return {"sim": sim_bag, "foreign": foreign, "cfg": cfg_path, "ckpt": ckpt, "dir": d}


def _cli(*args):
    from ssm_perception.cli import app

    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_evaluate_sim_bag_writes_metrics_report_plots(bags):
    out = bags["dir"] / "out"
    res = _cli(bags["sim"], "--model", bags["ckpt"], "--baselines", "logodds,convgru", "-c", bags["cfg"], "-o", out)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema_version"] == 2
    assert set(m["models"]) == {"model", "logodds"}
    assert "convgru" in m["skipped_models"] and "convgru=PATH" in m["skipped_models"]["convgru"]
    bag = m["bags"][0]
    assert bag["ground_truth"] is True and bag["frames"] >= 8
    assert any(e["type"] == "dropout" for e in bag["events"])
    for name, mm in m["models"].items():
        occ = mm["occupancy"]
        assert occ["frames"] == bag["frames"], name
        for split in ("all", "static", "dynamic", "visible", "occluded", "static_occluded", "range_0_20"):
            s = occ["splits"][split]
            assert s["tp"] + s["fp"] + s["fn"] + s["tn"] > 0
        assert 0.0 <= occ["ece"] <= 1.0
        # primary: the published grid; secondary: the network's raw probability (with the moving output)
        raw = mm["occupancy_raw"]
        assert raw["frames"] == occ["frames"] and occ["moving"] is None
        assert set(raw["splits"]["all"]) == set(occ["splits"]["all"])
        lf = mm["label_free"]
        assert lf["frames"] == bag["frames"] and lf["evidence_cells"] > 0
        assert lf["evidence_coverage"] == 1.0  # the rule check: no evidence cell is published free
        assert 0.0 <= lf["evidence_coverage_network"] <= 1.0 and 0.0 <= lf["free_space_contradiction_rate"] <= 1.0
        assert lf["labels"] is None and lf["tracks"]["ids"] >= 0
        assert mm["latency_ms"]["total"]["p50"] > 0 and mm["latency_ms"]["total"]["n"] == bag["frames"]
        assert mm["resets"]["by_reason"].get("route_start") == 1
        assert mm["recovery"], "adversity events must give recovery rows"
        assert mm["tracking"] is not None
    assert m["models"]["model"]["sha256"] and m["models"]["logodds"]["source"] == "training-free"
    report = (out / "report.md").read_text()
    for heading in ("## Occupancy", "## Latency per stage", "## Resets and health", "## Tracking", "## Recovery"):
        assert heading in report
    assert "## Label-free checks" in report
    pngs = {p.name for p in out.glob("*.png")}
    assert {"reliability.png", "latency.png", "iou_sim.png", "tracks_model_sim.png"} <= pngs
    assert any(p.startswith("bev_sim_") for p in pngs) and any(p.startswith("scan_model_sim_") for p in pngs)
    for p in pngs:
        assert f"({p})" in report


def test_no_ground_truth_and_topic_mapping(bags):
    from ssm_perception.eval.evaluate import EvaluationError, evaluate

    cfg = PerceptionConfig.from_yaml(bags["cfg"])
    with pytest.raises(EvaluationError) as err:
        evaluate([bags["foreign"]], cfg, bags["dir"] / "x", baselines=["logodds"], progress=False)
    msg = str(err.value)
    assert "/sensing/lidar/points is not in the bag" in msg and "/velodyne_points" in msg and "--topic-map" in msg
    assert not (bags["dir"] / "x").exists()

    out = bags["dir"] / "nogt"
    res = _cli(bags["foreign"], "--baselines", "logodds", "-c", bags["cfg"], "-o", out, "--topic-map",
               "lidar=/velodyne_points", "--no-plots")
    assert res.exit_code == 0, res.output
    assert "no ground truth" in res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["bags"][0]["ground_truth"] is False
    assert any(t.startswith("radar") for t in m["bags"][0]["missing_topics"])
    lo = m["models"]["logodds"]
    assert lo["occupancy"] is None and lo["tracking"] is None
    # Without ground truth: the label-free metrics (the rule keeps the published coverage at 1).
    assert lo["label_free"]["evidence_cells"] > 0 and lo["label_free"]["evidence_coverage"] == 1.0
    assert lo["latency_ms"]["total"]["n"] == m["bags"][0]["frames"] > 0
    assert lo["resets"]["count"] >= 1 and sum(lo["health"].values()) == m["bags"][0]["frames"]
    assert "No ground truth in foreign" in (out / "report.md").read_text()
    # the LiDAR input checks (bev/lidar_input.py) reach metrics.json and the report
    assert lo["lidar_input"]["foreign"]["intensity"]["level"] in ("OK", "WARN")
    assert "## LiDAR input checks" in (out / "report.md").read_text()
    assert "model" in m["skipped_models"]  # no --model and nothing shipped for this tiny grid


def test_cli_reports_unknown_topic_and_bad_map(bags):
    res = _cli(bags["foreign"], "-c", bags["cfg"], "-o", bags["dir"] / "y")
    assert res.exit_code == 2
    assert "/velodyne_points" in res.output and "sensor_msgs/msg/PointCloud2" in res.output
    res = _cli(bags["foreign"], "-c", bags["cfg"], "-o", bags["dir"] / "y", "--topic-map", "lidar")
    assert res.exit_code == 2 and "role=/topic" in res.output
    res = _cli(bags["dir"] / "nope", "-o", bags["dir"] / "y")
    assert res.exit_code == 2 and "no such file" in res.output


def test_label_file_gives_mota_idf1_and_recall_by_range(bags):
    """A bag without simulator ground truth, with a label file of its objects (io/labels.py): tracking
    metrics with the simulator evaluation's matching rules, recall by range, tracks far from labels."""
    from ssm_perception.io.bag import read_messages
    from ssm_perception.io.labels import LabelBox, write_labels
    from ssm_perception.io.ros_convert import stamp_to_ns
    from ssm_perception.io.track_fields import class_of

    boxes = []
    for _, _, _, msg in read_messages(bags["sim"], ["/ground_truth/objects"]):
        for o in msg.tracks:
            cls = {1: "car", 2: "truck", 3: "cyclist", 4: "pedestrian"}.get(class_of(o.classification), "other")
            p, d = o.pose.pose.position, o.shape.dimensions
            boxes.append(LabelBox(stamp_to_ns(msg.header.stamp), str(o.track_number), cls, p.x, p.y, p.z,
                                  d.x, d.y, d.z, 0.0))
    assert boxes
    labels = bags["dir"] / "labels.jsonl"
    write_labels(labels, boxes)
    out = bags["dir"] / "labelled"
    res = _cli(bags["foreign"], "--model", bags["ckpt"], "-c", bags["cfg"], "-o", out, "--topic-map",
               "lidar=/velodyne_points", "--labels", labels, "--no-plots")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["bags"][0]["labels"] == str(labels) and m["bags"][0]["labelled_frames"] > 0
    lab = m["models"]["model"]["label_free"]["labels"]
    assert lab["frames"] == m["bags"][0]["frames"]
    car = lab["tracking"]["car"]
    assert car["num_gt"] > 0 and car["mota"] <= 1.0 and 0.0 <= car["idf1"] <= 1.0
    rows = lab["recall_by_range"]["car"]
    assert sum(r["num_gt"] for r in rows) == car["num_gt"]
    assert lab["tracks_far_from_labels_share"] is None or 0.0 <= lab["tracks_far_from_labels_share"] <= 1.0
    assert "## Tracking against the label file" in (out / "report.md").read_text()
    # One label file per bag, and it must exist: a one-line error, exit 2.
    res = _cli(bags["foreign"], "-c", bags["cfg"], "-o", out, "--topic-map", "lidar=/velodyne_points",
               "--labels", bags["dir"] / "missing.jsonl")
    assert res.exit_code == 2 and "no such file" in res.output

"""`ssm-perception evaluate --ablate`: one row per sensor set through the same pipeline, a switched-off
sensor really absent (never encoded, no encode part), gains over LiDAR only, and one-line refusals."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ssm_perception.config import GridConfig, PerceptionConfig

GRID = GridConfig(length_x=24.0, length_y=24.0, resolution=1.0)


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    import torch

    from ssm_perception.model import BevPerceptionModel, save_checkpoint
    from ssm_perception.sim.scenario import Scenario
    from ssm_perception.sim.writer import write_bag

    torch.manual_seed(0)  # the untrained model's weights: the same grids every run
    d = tmp_path_factory.mktemp("ablate")
    sc = Scenario.from_preset("urban", seed=3, duration_s=1.2, grid=GRID)
    cfg = PerceptionConfig.model_validate({
        "grid": GRID.model_dump(),
        "model": {"kind": "mamba", "d_model": 8, "d_state": 4, "headdim": 4, "allow_untrusted_weights": True},
    })
    (d / "cfg.yaml").write_text(cfg.to_yaml())
    save_checkpoint(BevPerceptionModel(cfg), d / "tiny.safetensors", {"note": "untrained, for the test"})
    return {"bag": write_bag(sc, d / "sim", progress=False), "cfg": d / "cfg.yaml", "ckpt": d / "tiny.safetensors",
            "dir": d}


def _cli(*args):
    from ssm_perception.cli import app

    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_ablation_rows_gains_and_sensors_really_off(bag):
    out = bag["dir"] / "out"
    res = _cli(bag["bag"], "--model", bag["ckpt"], "-c", bag["cfg"], "-o", out, "--no-plots",
               "--ablate", "lidar,lidar+radar,lidar+camera,all")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    ab = m["ablation"]
    rows = ab["models"]["model"]["rows"]
    assert [r["set"] for r in rows] == ["lidar", "lidar+radar", "lidar+camera", "lidar+radar+camera"]
    assert set(m["models"]) == {"model@lidar", "model@lidar+radar", "model@lidar+camera", "model@lidar+radar+camera"}
    frames = m["bags"][0]["frames"]
    by = {r["set"]: r for r in rows}
    for r in rows:
        assert r["frames"] == frames and r["iou"] is not None and r["latency_ms"]["process"]["p50"] > 0
        # a sensor of the set is encoded in the frames; a switched-off one never, and has no encode part
        for s in ("lidar", "radar", "camera"):
            if s in r["sensors"]:
                assert r["sensor_frames"][s] > 0, (r["set"], s)
                assert r["latency_ms"]["encode_parts"][s]["p50"] >= 0
            else:
                assert r["sensor_frames"][s] == 0, (r["set"], s)
                assert s not in r["latency_ms"]["encode_parts"], (r["set"], s)
    # the sets really ran on different inputs: the network's probabilities (mean per reliability bin) differ
    rel = {k: [b["confidence"] for b in m["models"][f"model@{k}"]["occupancy_raw"]["reliability"]] for k in by}
    assert rel["lidar"] != rel["lidar+radar"] and rel["lidar"] != rel["lidar+camera"] != rel["lidar+radar+camera"]
    assert by["lidar"]["gain_over_lidar"] is None
    g = by["lidar+camera"]["gain_over_lidar"]
    assert g["iou"] == pytest.approx(by["lidar+camera"]["iou"] - by["lidar"]["iou"])
    lo, hi = g["iou_ci95"]
    assert -1.0 <= lo <= hi <= 1.0
    contrib = {(c["sensor"], c["added_to"]) for c in ab["models"]["model"]["contributions"]}
    assert contrib == {("radar", "lidar"), ("radar", "lidar+camera"), ("camera", "lidar"),
                       ("camera", "lidar+radar")}
    assert ab["failed"] == {} and "command" in ab
    md = (out / "ablation.md").read_text()
    assert "| `lidar+camera` |" in md and "trained with all three sensors" in md
    assert "## Sensor ablation" in (out / "report.md").read_text()
    assert json.loads((out / "ablation.json").read_text())["ablation"]["sets"] == ab["sets"]
    from ssm_perception.eval.ablation import plot

    assert plot(ab, out / "ablation.png") and (out / "ablation.png").stat().st_size > 0


def test_paired_bootstrap_interval():
    import numpy as np

    from ssm_perception.eval.ablation import paired_bootstrap

    rng = np.random.default_rng(1)
    base = [rng.integers(50, 100, (60, 3)).astype(float) for _ in range(2)]
    assert paired_bootstrap(base, base) == (0.0, 0.0)  # the same frames resampled for both sides
    better = [b + np.array([10.0, -5.0, -5.0]) for b in base]  # more hits, fewer errors in every frame
    lo, hi = paired_bootstrap(base, better)
    assert 0.0 < lo <= hi
    assert paired_bootstrap(base, [b[:-1] for b in better]) is None  # not the same frames: no paired interval


def test_ablation_one_failing_set_keeps_the_others(bag, monkeypatch):
    from ssm_perception.eval import evaluate as ev

    real = ev.run_bag

    def flaky(view, pipe, cfg, *a, **k):
        if not cfg.sensors.use_radar:
            raise RuntimeError("boom")
        return real(view, pipe, cfg, *a, **k)

    monkeypatch.setattr(ev, "run_bag", flaky)
    cfg = PerceptionConfig.from_yaml(bag["cfg"])
    m = ev.evaluate([bag["bag"]], cfg, bag["dir"] / "flaky", main_checkpoint=str(bag["ckpt"]), progress=False,
                    plots=False, ablate=[("lidar",), ("lidar", "radar")])
    assert m["ablation"]["failed"] == {"model@lidar": "RuntimeError: boom"}
    assert [r["set"] for r in m["ablation"]["models"]["model"]["rows"]] == ["lidar+radar"]
    assert "model@lidar+radar" in json.loads((bag["dir"] / "flaky" / "metrics.json").read_text())["models"]


@pytest.mark.parametrize("value, words", [
    ("lidar,sonar", "unknown sensor 'sonar'"),
    ("lidar,,all", "empty sensor set"),
    ("lidar,lidar", "given twice"),
    ("lidar+lidar", "names a sensor twice"),
])
def test_bad_ablate_value_is_one_line_exit_2(bag, value, words):
    res = _cli(bag["bag"], "-c", bag["cfg"], "-o", bag["dir"] / "bad", "--ablate", value)
    assert res.exit_code == 2, res.output
    assert words in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (bag["dir"] / "bad").exists()

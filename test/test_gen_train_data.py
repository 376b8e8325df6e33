"""scripts/gen_train_data.py without the simulator: resumability (finished entries skipped, dead
workers' partial entries removed), the summary, and its one-line errors."""

import importlib.util
import json
from pathlib import Path

from ssm_perception.config import PerceptionConfig
from ssm_perception.train.dataset import cache_path, make_specs

ROOT = Path(__file__).resolve().parents[1]
spec_ = importlib.util.spec_from_file_location("gen_train_data", ROOT / "scripts" / "gen_train_data.py")
gen = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(gen)


def _entry(cache, spec, cfg, info):
    p = cache_path(cache, spec, cfg)
    p.mkdir(parents=True)
    (p / "spec.json").write_text(json.dumps({"preset": spec.preset, "seed": spec.seed, "duration_s": spec.duration_s}))
    (p / "info.json").write_text(json.dumps(info))
    return p


def test_resume_and_summary(tmp_path, capsys):
    cfg = PerceptionConfig()
    specs = make_specs(["randomised"], range(3), 30.0)
    infos = [{"preset": "randomised", "seed": s.seed, "duration_s": 30.0, "layout": lay, "frames": 300,
              "lidar_model": m, "intensity_model": "signal", "self_returns": s.seed == 0, "weather": w,
              "objects": {"car": 10, "truck": s.seed}, "object_frames": {"car": 100}, "cpu_s": 60.0,
              "encode_cpu_s": 20.0}
             for s, lay, m, w in zip(specs, ("urban", "urban", "highway"), ("vlp16", "os1_64", "vlp16"),
                                     ([], ["fog"], []), strict=True)]
    for s, i in zip(specs, infos, strict=True):
        _entry(tmp_path, s, cfg, i)
    stale = tmp_path / ".randomised-s9-30s-x.999999999.tmp"  # a worker that no longer runs
    stale.mkdir()
    rc = gen.main(["--hours", str(90 / 3600), "--duration", "30", "--jobs", "2", "--cache-dir", str(tmp_path),
                   "--no-progress"])
    assert rc == 0 and not stale.exists()
    out = capsys.readouterr().out
    assert "3 already done, 0 to generate" in out and "train_seeds: {start: 0, count: 3}" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["sequences"] == 3 and abs(s["hours"] - 0.025) < 1e-9 and s["frames"] == 900
    assert s["sensor_models"] == {"vlp16": 2, "os1_64": 1} and s["layouts"] == {"urban": 2, "highway": 1}
    assert s["weather"] == {"fog": 1} and s["self_returns"] == 1
    assert s["objects_per_class"] == {"car": 30, "truck": 3}
    assert s["sim_s_per_cpu_s"] == 0.5 and s["cpu_h_per_sim_h"] == 2.0
    assert s["projected_wall_h_4h_on_16_cores"] == 0.5


def test_user_errors(capsys):
    assert gen.main(["--hours", "0", "--jobs", "1"]) == 2
    assert gen.main(["--hours", "1", "--presets", "mars"]) == 2
    assert "unknown preset(s) ['mars']" in capsys.readouterr().err

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


def test_compressed_frames_index_like_the_array(tmp_path):
    import numpy as np

    from ssm_perception.train.dataset import CompressedFrames

    rng = np.random.default_rng(0)
    a = np.zeros((7, 5, 16, 16), np.float16)
    a[:, 1:3] = rng.normal(size=(7, 2, 16, 16))  # mostly zeros, as the BEV features
    CompressedFrames.write(tmp_path / "f.zst", a)
    c = CompressedFrames(tmp_path / "f.zst")
    assert c.shape == a.shape and c.dtype == a.dtype and len(c) == 7
    assert (tmp_path / "f.zst").stat().st_size < a.nbytes / 2
    for key in (3, -1, slice(2, 5), slice(None), [6, 0, 0], (2, [1, 2]), (slice(1, 3), 2), np.int64(4)):
        np.testing.assert_array_equal(c[key], a[key])
    np.testing.assert_array_equal(np.array(c), a)
    import pytest

    with pytest.raises(IndexError):
        c[7]


def test_compressed_cache_gives_the_same_training_batches(monkeypatch, tmp_path):
    import numpy as np
    import test_train_fakes as fk

    from ssm_perception.train.config import TrainConfig
    from ssm_perception.train.dataset import CompressedFrames, SequenceStore
    from ssm_perception.train.trainer import WindowSampler

    fk.patch(monkeypatch)
    cfg = TrainConfig.model_validate({"perception": {"grid": fk.GRID}, "data": {"presets": ["urban"]},
                                      "optim": {"batch_size": 2, "tbptt": 4}})
    specs = make_specs(["urban"], range(2), 1.6)
    batches = []
    for compress in (False, True):
        store = SequenceStore(specs, cfg.perception, tmp_path / f"c{compress}", compress=compress).start()
        store.join()
        assert isinstance(store.sequences[0]["features"], CompressedFrames) == compress
        batches.append(WindowSampler(store, cfg, seed=3).next())
    a, b = batches
    np.testing.assert_array_equal(a["features"], b["features"])
    np.testing.assert_array_equal(a["reset"], b["reset"])
    np.testing.assert_array_equal(a["se2"], b["se2"])


def test_randomised_training_config_is_four_hours_of_valid_presets():
    from ssm_perception.sim.presets import PRESETS, RANDOMISED
    from ssm_perception.train.config import TrainConfig

    d = TrainConfig.from_yaml(ROOT / "config" / "train_randomised.yaml").data
    assert d.train_seeds.count * d.duration_s / 3600 >= 4.0 and d.compress_cache
    assert set(d.presets) <= set(PRESETS) | set(RANDOMISED) and "randomised" in d.presets

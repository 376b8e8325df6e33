"""`ssm-perception bench` end to end on a tiny grid, its import path without ROS/plotting packages
(the GPU image has none of them), the payload encoders and the plot script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssm_perception import bench

REPO = Path(__file__).resolve().parents[1]
# Not on the GPU machine (or not needed by a benchmark): importing any of them must not be required.
BLOCKED = ("rclpy", "rosbags", "open3d", "matplotlib", "cv2", "typer", "sensor_msgs", "nav_msgs")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run: 16x16 cells, histories 1 and 3, two models (memory probes: see below)."""
    tmp = tmp_path_factory.mktemp("bench")
    (tmp / "block").mkdir()
    (tmp / "block" / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, _Block())
    """))
    out = tmp / "bench_tiny.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp / "block"), str(REPO)]))
    cmd = [sys.executable, "-m", "ssm_perception.bench", "--grid", "16", "--history", "1,3",
           "--models", "mamba,attention", "--frames", "2", "--warmup", "0", "--source-frames", "2",
           "--threads", "1", "--no-memory", "-q", "-o", str(out)]
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout, out


def test_bench_runs_without_ros_and_reports_every_stage(tiny_run):
    result, stdout, _ = tiny_run
    g = result["grids"]["16"]
    assert not g["errors"]
    assert set(g["full_step"]) == {"mamba", "attention"}
    for label, r in g["full_step"].items():
        assert set(r["stages"]) == set(bench.STAGES), label
        for s in bench.STAGES:
            st = r["stages"][s]
            if s == "msg_encode":  # no ROS message packages in this run: said so, not faked
                assert st == {"n": 0} and r["msg_encode_method"].startswith("unavailable"), (label, r)
                continue
            assert st["n"] == 2 and 0 <= st["p50"] <= st["p99"] <= st["max"], (label, s, st)
        # process() holds its stages; the frame holds process()
        assert r["process"]["p50"] >= max(r["stages"][s]["p50"] for s in bench.PROCESS_STAGES)
        assert r["full_step"]["p50"] >= r["process"]["p50"]
        assert r["full_step_process_cpu"]["n"] == 2 and "lidar" in r["encode_parts_p50_ms"]
        assert r["weights"]
    env = result["environment"]
    assert result["bandwidth"]["measured_GBps"] > 0 and result["format"] == bench.FORMAT
    assert env["device"] == "cpu" and env["cpu_model"] and env["cpu_count"] and len(env["load_avg"]) == 3
    assert g["full_step"]["mamba"]["profile"]["top_ops"]  # torch.profiler ran on the Mamba frame
    assert "| mamba |" in stdout


def test_full_step_is_the_pipeline_with_the_nodes_decode_and_encode(monkeypatch):
    """The timed step calls PerceptionPipeline.process once per frame (no copy of the step) and
    encodes the node's messages (io.ros_convert.frame_messages) where the ROS packages exist."""
    import torch

    from ssm_perception import pipeline
    from ssm_perception.io import ros_convert

    calls = {"process": 0, "messages": 0}
    process, messages = pipeline.PerceptionPipeline.process, ros_convert.frame_messages

    def counted_process(self, inp):
        calls["process"] += 1
        assert inp.radar is not None and inp.image is not None and inp.ego_twist is not None or calls["process"] == 1
        return process(self, inp)

    def counted_messages(out, cfg):
        calls["messages"] += 1
        grid, observation, tracks, markers = messages(out, cfg)
        assert grid.info.width == observation.info.width == 16 and tracks.header.frame_id == cfg.frames.odom
        return grid, observation, tracks, markers

    monkeypatch.setattr(pipeline.PerceptionPipeline, "process", counted_process)
    monkeypatch.setattr(ros_convert, "frame_messages", counted_messages)
    frames = bench.simulate_frames("urban", 0, 2, progress=False)
    r = bench.full_step_loop(frames, 16, "logodds", "reference", 1, torch.device("cpu"), 1, 1)
    assert calls == {"process": 2, "messages": 2}
    assert r["stages"]["msg_encode"]["n"] == 1 and r["stages"]["assemble"]["n"] == 1
    assert r["msg_encode_method"].startswith("io.ros_convert.frame_messages")


def test_history_sweep_state(tiny_run):
    result, _, _ = tiny_run
    h = result["grids"]["16"]["history"]
    cells = 16 * 16
    # Mamba's state does not depend on history; the attention baseline keeps K frames of D + 2 floats.
    assert h["mamba"]["1"]["state_bytes"] == h["mamba"]["3"]["state_bytes"] > 0
    dim = 32  # config default d_model
    for k in (1, 3):
        assert h["attention"][str(k)]["state_bytes"] == 4 * cells * k * (dim + 2)
    assert h["mamba"]["3"]["core_warp_step"]["n"] >= 5
    names = [t["target"] for t in result["targets"]]
    assert any("mamba vs attention at 16" in n for n in names) is False  # no h=16 in this run
    bb = result["grids"]["16"]["bandwidth_bound"]["mamba"]
    assert bb["bytes_per_step"] == 2 * h["mamba"]["3"]["state_bytes"]
    assert bb["core_step_over_bound"] > 0


def test_peak_memory_probe_on_cpu():
    """A fresh child process per measurement: attention's 16 frames of state show up in its peak RSS."""
    import torch

    r = bench.peak_memory(32, "attention", "reference", 16, torch.device("cpu"), steps=1)
    assert r["state_bytes"] == 4 * 32 * 32 * 16 * (32 + 2)
    assert r["peak_bytes"] >= r["state_bytes"], r


def test_evaluate_targets_on_synthetic_result():
    def hist(peaks, speeds):
        return {str(h): {"memory": {"peak_bytes": p}, "warp_step": {"p50": t}} for h, p, t in zip((1, 16, 64), peaks, speeds, strict=True)}

    result = {"environment": {"device": "cpu"}, "settings": {"threads": 2}, "grids": {"128": {
        "full_step": {"mamba": {"full_step": {"p50": 80.0, "p99": 120.0}}},
        "history": {"mamba": hist((100, 100, 101), (5, 5, 5)), "attention": hist((50, 400, 1600), (8, 30, 90))},
    }}}
    t = {x["target"]: x for x in bench.evaluate_targets(result)}
    assert t["mamba: peak memory 64 vs 1 frames at 128x128"]["met"] is True
    assert t["attention: peak memory 64 vs 1 frames at 128x128 (grows)"]["met"] is True
    speed = t["mamba vs attention at 16 frames, warp+step p50 speed-up at 128x128"]
    assert speed["value"] == 6.0 and speed["met"] is True
    assert t["mamba: CPU full step p50 at 128x128 [ms] (2 threads)"]["met"] is True
    result["grids"]["128"]["history"]["mamba"] = hist((100, 150, 300), (5, 10, 25))
    t = {x["target"]: x for x in bench.evaluate_targets(result)}
    assert t["mamba: peak memory 64 vs 1 frames at 128x128"]["met"] is False
    assert t["mamba vs attention at 16 frames, warp+step p50 speed-up at 128x128"]["met"] is False


def test_plot_bench_writes_three_pngs(tiny_run, tmp_path):
    _, _, path = tiny_run
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "plot_bench.py"), str(path), "--out-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    for suffix in ("stages", "memory", "grid"):
        png = tmp_path / f"{path.stem}_{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_bench_rejects_other_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "something else"}))
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "plot_bench.py"), str(bad)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "not an ssm_perception bench result" in res.stderr


def test_argument_errors():
    assert bench._int_list("128, 200") == [128, 200]
    for bad in ("", "a,b", "0", "-3"):
        with pytest.raises(ValueError):
            bench._int_list(bad)
    with pytest.raises(ValueError, match="unknown model"):
        bench.run_bench(bench.BenchSettings(models=["transformer"]), progress=False)


def test_percentiles():
    r = bench.percentiles(list(range(1, 101)))
    assert r["p50"] == pytest.approx(50.5) and r["p99"] == pytest.approx(99.01) and r["n"] == 100
    assert bench.percentiles([]) == {"n": 0}


# ------------------------------------------------------------------ scripts/gpu_fused_sweep.py
def _sweep_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_fused_sweep", REPO / "scripts" / "gpu_fused_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_sweep_config_list():
    from ssm_perception.temporal.fused_step import LAUNCH_KEYS

    sw = _sweep_module()
    shapes = sw.shape_configs()
    keys = [tuple(sorted(c.items())) for c in shapes]
    assert len(keys) == len(set(keys)) and 20 <= len(shapes) <= 60
    assert shapes[0] == {"BLOCK": 256, "P_PER": 1, "num_warps": 4}  # the H100 autotuner's pick comes first
    for c in shapes:
        assert set(c) <= set(LAUNCH_KEYS)
        assert c["BLOCK"] & (c["BLOCK"] - 1) == 0 and c["BLOCK"] * 8 >= 32 * c["num_warps"]
    hints = sw.hint_configs(shapes[:2])
    assert len(hints) == 2 * (len(sw.HINTS) - 1 + len(sw.STAGES))
    assert all(set(c) <= set(LAUNCH_KEYS) for c in hints)
    assert {c.get("NEW_CACHE") for c in hints} >= {"", ".cs"} and {c.get("num_stages") for c in hints} >= {1, 2}
    assert sw.config_label(None) == "autotuned"
    assert sw.config_label({"BLOCK": 64, "P_PER": 2, "PREV_EVICT": "", "NEW_CACHE": ".cs"}) == "B=64 P=2 st=.cs"


def test_gpu_sweep_variant_list():
    """Stage 'variants': the new kernels before the old shapes, likely winners first, every key a
    launch key, no duplicates, and labels that name the kernel."""
    from ssm_perception.temporal.fused_step import LAUNCH_KEYS, VARIANTS

    sw = _sweep_module()
    vs = sw.variant_configs()
    keys = [tuple(sorted(c.items())) for c in vs]
    assert len(keys) == len(set(keys)) and 40 <= len(vs) <= sw.MAX_VARIANTS
    assert all(set(c) <= set(LAUNCH_KEYS) and c["VARIANT"] in VARIANTS for c in vs)
    assert {c["VARIANT"] for c in vs[:10]} == {"rows", "cells"}
    first_cells = next(c for c in vs if c["VARIANT"] == "cells")
    assert first_cells["LANES"] == 1 and first_cells["HEADS_PER"] == 1 and "PERSIST" not in first_cells
    assert any(c.get("PERSIST") for c in vs[:40]) and any(c.get("HEADS_PER") == 4 for c in vs[:16])
    assert vs[5] == {**first_cells, "TILE_W": 32}  # 2-D tiles right beside consecutive cells
    assert any(c["VARIANT"] == "cells" and c["LANES"] == 0 for c in vs[:30])  # the LANES control
    assert any(c.get("RSPLIT") == 2 for c in vs[:12])
    assert sw.config_label(first_cells).startswith("cells B=")
    assert sw.config_label({"VARIANT": "rows", "BLOCK": 64, "LANES": 1}) == "B=64 L=1"
    hints = sw.hint_configs([first_cells])  # the hints keep the variant's own keys
    assert all(h["VARIANT"] == "cells" and h["HEADS_PER"] == 1 for h in hints)


def test_gpu_sweep_arguments_and_output_path(monkeypatch, capsys):
    sw = _sweep_module()
    a = sw.parse_args([])
    assert (a.size, a.device, a.iters, a.budget_s, a.max_configs) == (200, "cuda", 100, 100.0, 0)
    for bad in (["--size", "1"], ["--iters", "0"], ["--budget-s", "0"], ["--device", "tpu"], ["--tol", "-1"]):
        with pytest.raises(SystemExit):
            sw.parse_args(bad)
    monkeypatch.setenv("OUT", "/some/out")
    assert sw.output_path("") == Path("/some/out/gpu_fused_sweep.json")
    assert sw.output_path("x/y.json") == Path("x/y.json")
    monkeypatch.delenv("OUT")
    assert sw.output_path("") == REPO / "results" / "gpu_fused_sweep.json"
    assert sw.main(["--list"]) == 0
    assert "B=256 P=1 w=4" in capsys.readouterr().out


def test_gpu_sweep_json_writer_best_and_table(tmp_path):
    sw = _sweep_module()
    rows = [
        {"label": "autotuned", "config": None, "status": "ok", "p50_ms": 0.05, "max_err_y": 1e-6, "max_err_state": 1e-6},
        {"label": "a", "config": {"BLOCK": 64}, "status": "ok", "p50_ms": 0.12, "ratio_to_bound": 2.1,
         "max_err_y": 1e-6, "max_err_state": 1e-6},
        {"label": "b", "config": {"BLOCK": 128}, "status": "ok", "p50_ms": 0.10, "ratio_to_bound": 1.8,
         "max_err_y": 1e-6, "max_err_state": 1e-6},
        {"label": "c", "config": {"BLOCK": 256}, "status": "wrong", "p50_ms": 0.01, "max_err_y": 3.0,
         "max_err_state": 1.0},
        {"label": "d", "config": {"BLOCK": 96}, "status": "error", "error": "CompilationError: arange"},
    ]
    best = sw.best_of(rows)
    assert best["label"] == "b"  # not the wrong one, not the autotuned baseline
    result = {"format": sw.FORMAT, "env": {"device": "GPU X", "device_kind": "cuda"},
              "meta": {"size": 200, "bound_ms_measured_bw": 0.0556, "copy_bandwidth_Bps": 2.9e12},
              "configs": rows, "skipped": ["e"], "best": best, "wall_s": 12.0}
    path = tmp_path / "sub" / "sweep.json"
    sw.write_json(result, path)
    assert json.loads(path.read_text()) == result and not list(path.parent.glob("*.tmp"))
    table = sw.summary(result)
    assert 'BEST_CONFIG = {"BLOCK": 128}' in table and "CompilationError" in table and "1 skipped" in table
    lines = table.splitlines()
    assert lines.index(next(ln for ln in lines if ln.startswith("c "))) < lines.index(
        next(ln for ln in lines if ln.startswith("b ")))  # sorted by time, the wrong one marked as such


def test_gpu_sweep_runs_under_the_triton_interpreter(tmp_path):
    """The whole flow on CPU (Triton's interpreter, a 6x6 grid): reference check, a compile failure
    recorded without stopping the sweep, the JSON and the table. No timing is meaningful here."""
    pytest.importorskip("triton")
    out = tmp_path / "sweep.json"
    code = textwrap.dedent(f"""
        import os, sys, json
        os.environ["TRITON_INTERPRET"] = "1"
        sys.path.insert(0, {str(REPO / "scripts")!r})
        import gpu_fused_sweep as sw
        s = sw.Sweep(6, "cpu", 1, 1e-3)
        rows = [s.measure(c) for c in (None, {{"BLOCK": 96, "P_PER": 16}}, {{"BLOCK": 64, "P_PER": 4}},
                                       {{"VARIANT": "cells", "BLOCK": 96, "HEADS_PER": 4}})]
        print(json.dumps([{{k: r.get(k) for k in ("status", "error", "max_err_state", "variant")}} for r in rows]))
        sys.exit(sw.main(["--device", "cpu", "--size", "6", "--max-configs", "1", "--iters", "1", "-o", {str(out)!r}]))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 1, res.stderr[-2000:]  # 1: the autotuned baseline only, so no explicit best
    rows = json.loads(res.stdout.splitlines()[0])
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error"]  # the variants are tested in test_mamba_fused
    assert "power of 2" in rows[1]["error"] and rows[2]["max_err_state"] < 1e-5 and "power of 2" in rows[3]["error"]
    assert [r["variant"] for r in rows] == ["rows", "rows", "rows", "cells"]
    result = json.loads(out.read_text())
    assert result["format"] == "ssm_perception.gpu_fused_sweep/1" and result["meta"]["size"] == 6
    io = result["meta"]["bytes_per_cell_all_io"]  # default model: 4 heads x 16 rows x d_state 8, fp32
    assert io["state_read"] == io["state_write"] == 2048 and sum(io.values()) == 4944
    assert result["meta"]["bound_all_io_bytes"] == 4944 * 36
    assert [r["label"] for r in result["configs"]] == ["autotuned"] and len(result["skipped"]) > 20
    assert result["env"]["triton_interpret"] == "1" and "autotuned" in res.stdout


def test_keep_tensors_in_heap_is_opt_in_and_applies():
    """The glibc heap setting is process-wide: checked in a child process; the bench records it."""
    code = ("from ssm_perception.bench import keep_tensors_in_heap as k, BenchSettings as S; import json; "
            "print(json.dumps([k(64), S().heap_mib]))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    applied, default = json.loads(res.stdout)
    assert default == 0 and applied["heap_mib"] == 64
    assert applied["applied"] is (sys.platform == "linux")
    with pytest.raises(ValueError, match="malloc-heap-mib"):
        bench.bench_main("cpu", "16", "1", "/nonexistent/x.json", "mamba", "", 2, 0, 2, 1, False, False, True, -1)

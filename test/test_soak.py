"""The soak script: its checks on synthetic series (they must be able to fail), and the 2-minute CI
version of the real thing (scripts/soak.py --minutes 2 on a small grid)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


def test_memory_growth_check():
    flat = [400e6 + 1e5 * np.sin(k) for k in range(100)]
    assert soak.evaluate(flat, None, [30.0] * 100, 0.01)["rss_growth"]["ok"]
    leak = [400e6 * (1 + 0.0003 * k) for k in range(100)]  # +3 % over the run
    g = soak.evaluate(leak, None, [30.0] * 100, 0.01)["rss_growth"]
    assert not g["ok"] and g["growth"] == pytest.approx(0.0276, abs=0.003)
    gpu_leak = soak.evaluate(flat, leak, [30.0] * 100, 0.01)
    assert gpu_leak["rss_growth"]["ok"] and not gpu_leak["gpu_memory_growth"]["ok"]
    assert not soak.evaluate(flat[:3], None, [30.0] * 100, 0.01)["rss_growth"]["ok"]  # too few samples


def test_latency_creep_check():
    rng = np.random.default_rng(0)
    steady = list(30 + rng.normal(0, 1, 400))
    assert soak.evaluate([1.0] * 10, None, steady, 0.01)["latency_creep"]["ok"]
    creeping = list(30 + np.linspace(0, 10, 400) + rng.normal(0, 1, 400))
    c = soak.evaluate([1.0] * 10, None, creeping, 0.01)["latency_creep"]
    assert not c["ok"] and c["last"] > c["limit"] == pytest.approx(c["first"] * 1.1 + 2.0)
    # a fast step under 2 ms never counts as creep (the slack), a slow one does
    assert soak.latency_creep([0.5] * 100 + [1.5] * 100)["last"] <= soak.latency_creep([0.5] * 100 + [1.5] * 100)["limit"]


@pytest.mark.slow
def test_two_minute_soak(tmp_path):
    """CI version: 2 minutes of the Mamba pipeline at 32x32 on a looping 2 s drive.

    On the shared CI machine wall time measures the neighbours too, so the creep check uses the
    process CPU time per frame (one torch thread) and its 10th percentile, and only the memory
    check is asserted; the 30-minute soak in results/ is judged on wall-clock p50."""
    out = tmp_path / "soak_ci.json"
    cmd = [sys.executable, str(REPO / "scripts" / "soak.py"), "--minutes", "2", "--grid", "32", "--bag-seconds", "2",
           "--threads", "1", "--warmup-s", "15", "--creep-clock", "cpu", "--creep-percentile", "10",
           "--out", str(out), "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False)
    assert out.exists(), res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["format"] == "ssm_perception.soak/1" and r["model"]["kind"] == "mamba"
    assert r["frames"] > 50 and r["loops"] > 2
    # every loop of the replay jumps back in time: the pipeline must reset each time, never crash
    assert r["resets"].get("time_backwards", 0) >= int(r["loops"]) - 1
    series = r["series"]
    assert len(series["rss_mib"]) == len(series["sample_t_s"]) >= 60
    assert series["sample_t_s"][-1] >= 115
    checks = r["checks"]
    assert set(checks) == {"rss_growth", "latency_creep"}
    assert checks["rss_growth"]["growth"] is not None and checks["latency_creep"]["first"] is not None
    assert (res.returncode == 0) == r["passed"], res.stdout
    assert checks["rss_growth"]["ok"], checks["rss_growth"]
    # The latency verdict is computed and recorded but not asserted here: on the shared CI machine it
    # measures the neighbours' load too (house rule: no timed unit tests). The creep logic itself is
    # tested on synthetic series above; the 30-minute soak in results/ is where it is judged.
    c = checks["latency_creep"]
    assert c["ok"] == (c["last"] <= c["limit"]) and c["quarter_frames"] >= 10
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

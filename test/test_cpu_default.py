"""Issue 21 item 6: pieces of the CPU default's speed-up, and its measurement script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def test_separable_sobel_equals_the_3x3_convolution():
    from ssm_perception.bev.camera import sobel_magnitude

    g = torch.Generator().manual_seed(0)
    for h, w in ((7, 5), (48, 64), (1, 3)):
        gray = torch.rand(1, 1, h, w, generator=g)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        k = torch.stack([sobel, sobel.T]).unsqueeze(1)
        ref = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), k)
        ref = torch.hypot(ref[:, 0:1], ref[:, 1:2])
        out = sobel_magnitude(gray)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-6


def test_cpu_default_check_writes_latency_and_the_grid_table(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import cpu_default_check

    out = tmp_path / "c.json"
    assert cpu_default_check.main(["--frames", "2", "--warmup", "1", "--grids", "24,16", "--seconds", "0.5",
                                   "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"] == "config/ssm_perception_cpu.yaml" and r["machine"]["cpu_count"] >= 1
    lat = r["latency"]
    assert lat["grid_cells"] == [80, 80]  # the CPU default file's grid, not a bench grid
    for stage in ("decode", "assemble", "reset", "encode", "temporal", "heads", "tracking", "health", "msg_encode"):
        assert lat["stages_wall_ms"][stage]["n"] == 2, stage
    assert lat["full_step_process_cpu_ms"]["n"] == 2 and "p99" in lat["full_step_wall_ms"]
    assert lat["grid_ready_wall_ms"]["p50"] <= lat["full_step_wall_ms"]["p50"]
    assert lat["load_avg_1min"]["samples"] >= 2
    rows = {row["grid"]: row for row in r["grids"]}
    assert set(rows) == {24, 16}
    assert rows[24]["iou_published_centre_16_vs_24"] == 0.0 and 0.0 <= rows[24]["iou_published_own_extent"] <= 1.0
    assert rows[16]["process_cpu_ms"]["n"] == rows[16]["frames_timed"] > 0

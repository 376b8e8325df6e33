"""Issue 21 item 6: the compiled Mamba CPU update (temporal/cpu_kernel.py) against the torch path.

The compiled loop (numba) is what CPU inference runs; the torch block loop stays as the fallback
where numba is missing. Both must give the same state and read-out (float32 rounding: 1e-5), with
the warp gathered inside, resets that clear even non-finite cells, and NaN propagating where no
reset clears it.
"""

from __future__ import annotations

import pytest
import torch

from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ModelConfig
from ssm_perception.temporal import cpu_kernel
from ssm_perception.temporal.mamba import MambaCore


def test_numba_is_installed_so_the_compiled_update_runs():
    assert cpu_kernel.available(), "numba missing (requirements.lock): CPU inference would take the slow torch path"


@pytest.mark.parametrize("groups_heads", [(1, 4), (2, 4)])
def test_compiled_update_equals_the_torch_path(monkeypatch, groups_heads):
    ngroups, nheads = groups_heads
    torch.manual_seed(0)
    core = MambaCore(8, ModelConfig(d_model=16, d_state=4, headdim=8, expand=2)).eval()
    core.ngroups = ngroups  # B and C per group of heads: the kernel's head -> group mapping
    core.mix_in = torch.nn.Conv2d(16, 2 * core.d_inner + 2 * ngroups * core.d_state + core.nheads, 1, bias=False)
    assert core.nheads == nheads
    n, b = 21, 2
    grid = BevGrid.square(n, 0.5)
    g = torch.Generator().manual_seed(3)
    prev = torch.randn(b, core.state_channels, n, n, generator=g).contiguous(memory_format=torch.channels_last)
    prev[0, :, 4, 4] = float("nan")
    x = torch.randn(b, 8, n, n, generator=g)
    dt = torch.full((b,), 0.1)
    mask = torch.rand(b, n, n, generator=g) < 0.1
    mask[0, 4, 4] = True
    calls = {"n": 0}
    real = cpu_kernel.ssm_update

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    cases = [((0.3, 0.1, 0.05), mask), ((0.3, 0.1, 0.05), None), (None, mask), (None, None), ((0.5, 0.0, 0.0), None)]
    for motion, m in cases:
        with torch.no_grad():
            monkeypatch.setattr(cpu_kernel, "ssm_update", counted)
            y1, s1 = core.warp_step(x, {"ssm": prev}, motion, dt, m, grid)
            monkeypatch.setattr(cpu_kernel, "ssm_update", lambda *a, **k: False)  # the torch block loop
            y2, s2 = core.warp_step(x, {"ssm": prev}, motion, dt, m, grid)
        assert torch.equal(torch.isnan(s1["ssm"]), torch.isnan(s2["ssm"]))
        assert torch.equal(torch.isnan(y1), torch.isnan(y2))
        assert (s1["ssm"] - s2["ssm"]).nan_to_num().abs().max().item() <= 1e-5
        assert (y1 - y2).nan_to_num().abs().max().item() <= 1e-5
        assert s1["ssm"].is_contiguous(memory_format=torch.channels_last)
        if m is not None and motion is None:
            assert torch.isfinite(s1["ssm"][0, :, 4, 4]).all()  # the reset cleared the NaN cell exactly
        if m is None and motion is None:
            assert torch.isnan(s1["ssm"][0, :, 4, 4]).any()  # ... and without a reset it stays visible
    assert calls["n"] == len(cases)


def test_a_failing_compiler_falls_back_to_the_torch_path(monkeypatch):
    def broken():
        def fn(*a):
            raise RuntimeError("no compiler here")
        return fn

    monkeypatch.setattr(cpu_kernel, "_kernel", broken)
    monkeypatch.setattr(cpu_kernel, "_failed", [])
    core = MambaCore(8, ModelConfig(d_model=16, d_state=4, headdim=8)).eval()
    x = torch.randn(1, 8, 6, 6)
    h = torch.randn(1, core.state_channels, 6, 6)
    with torch.no_grad():
        y, _ = core.step(x, {"ssm": h}, torch.tensor([0.1]))
    assert torch.isfinite(y).all() and not cpu_kernel.available()


def test_warm_compiles_the_update_and_the_pipeline_warms_it_before_its_first_frame(monkeypatch):
    from ssm_perception.config import GridConfig, PerceptionConfig
    from ssm_perception.pipeline import PerceptionPipeline

    assert cpu_kernel.warm() is True
    assert len(cpu_kernel._kernel().signatures) >= 1  # compiled (or loaded) for the C-contiguous layouts
    calls = []
    monkeypatch.setattr(cpu_kernel, "warm", lambda: calls.append(1) or True)
    PerceptionPipeline(PerceptionConfig(grid=GridConfig(length_x=8.0, length_y=8.0)))
    assert calls == [1]

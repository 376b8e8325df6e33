"""MambaCore on a CUDA device: the reference backend on the GPU equals the CPU, and the stock
mamba-ssm kernels equal the reference (skipped without CUDA / mamba-ssm; scripts/gpu_check.py
records the same comparison at full grid size in results/gpu_parity.json)."""

import importlib.util

import pytest
import torch

from ssm_perception.config import ModelConfig
from ssm_perception.temporal.mamba import MambaCore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_mamba_ssm = pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None,
                                     reason="mamba-ssm not installed (make setup-gpu)")
C_IN = 8
STEP_TOL = 1e-4  # same arithmetic, different kernels: observed ~1e-6
SEQ_TOL = 5e-3  # the stock chunk scan multiplies in TF32: observed 2.6e-3 (40x40), 3.2e-3 vs fp64 at 200x200


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def cores(backend: str, **kw):
    torch.manual_seed(0)
    ref = MambaCore(C_IN, ModelConfig(**kw)).cuda().eval()
    other = MambaCore(C_IN, ModelConfig(backend=backend, **kw)).cuda().eval()
    other.load_state_dict(ref.state_dict())
    return ref, other


def data(core, t, b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(t, b, C_IN, n, n, generator=g)
    dts = torch.rand(t, b, generator=g) * 0.3 + 0.05
    st = {"ssm": torch.randn(b, core.state_channels, n, n, generator=g) * 0.5}
    masks = torch.rand(t, b, n, n, generator=g) < 0.1
    return xs.cuda(), dts.cuda(), {k: v.cuda() for k, v in st.items()}, masks.cuda()


def test_reference_gpu_equals_cpu():
    ref, _ = cores("reference")
    xs, dts, st, masks = data(ref, 6, 2, 24)
    cpu = MambaCore(C_IN, ModelConfig()).eval()
    cpu.load_state_dict({k: v.cpu() for k, v in ref.state_dict().items()})
    with torch.no_grad():
        y_g, s_g = ref.forward_sequence(xs, dts, masks, st)
        y_c, s_c = cpu.forward_sequence(xs.cpu(), dts.cpu(), masks.cpu(), {k: v.cpu() for k, v in st.items()})
    assert (y_g.cpu() - y_c).abs().max().item() < 1e-4
    assert (s_g["ssm"].cpu() - s_c["ssm"]).abs().max().item() < 1e-4


@needs_mamba_ssm
def test_mamba_ssm_step_equals_reference_with_cell_chunking():
    ref, ms = cores("mamba_ssm", max_cells_per_call=1000)  # 2 x 48 x 48 cells -> 5 kernel calls
    xs, dts, st, masks = data(ref, 3, 2, 48, seed=1)
    with torch.no_grad():
        s_r, s_m = st, st
        for t in range(3):
            y_r, s_r = ref.step(xs[t], s_r, dts[t], masks[t])
            y_m, s_m = ms.step(xs[t], s_m, dts[t], masks[t])
            assert (y_r - y_m).abs().max().item() < STEP_TOL
            assert (s_r["ssm"] - s_m["ssm"]).abs().max().item() < STEP_TOL


@needs_mamba_ssm
@pytest.mark.parametrize("with_resets", [False, True])
def test_mamba_ssm_sequence_equals_reference(with_resets):
    ref, ms = cores("mamba_ssm", max_cells_per_call=1000)
    xs, dts, st, masks = data(ref, 10, 1, 40, seed=2)
    masks = masks if with_resets else None
    with torch.no_grad():
        y_r, s_r = ref.forward_sequence(xs, dts, masks, st)
        y_m, s_m = ms.forward_sequence(xs, dts, masks, st)
    tol = STEP_TOL if with_resets else SEQ_TOL  # with resets the backend steps (no chunk scan)
    assert (y_r - y_m).abs().max().item() < tol
    assert (s_r["ssm"] - s_m["ssm"]).abs().max().item() < tol

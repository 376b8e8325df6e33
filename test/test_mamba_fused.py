"""The fused Triton step (warp gather + state update) against the reference warp + step.

On a CUDA machine the compiled kernel is checked; without one, Triton's interpreter runs the same
kernel on CPU (TRITON_INTERPRET=1 must be set before the kernel module is imported)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from ssm_perception.bev.grid import BevGrid
from ssm_perception.config import ModelConfig
from ssm_perception.temporal.mamba import MambaCore

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

# Cell-aligned motions are bit-exact up to fp32 re-association in the update (~1e-6); bilinear
# weights are computed in fp32 from the cell index here and from float64 coordinates in warp.py,
# so they differ by ~1e-6 of a cell, i.e. ~1e-5 on O(1) states.
EXACT_TOL = 5e-6
BILINEAR_TOL = 2e-4
C_IN = 6


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 convolutions round their inputs to 10 bits: a 1e-7 difference in the SSM output can
    flip a rounding and show up as 1e-3 after the output projection. Compare in true fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def pair(**kw):
    torch.manual_seed(0)
    ref = MambaCore(C_IN, ModelConfig(**kw)).to(DEVICE).eval()
    fused = MambaCore(C_IN, ModelConfig(backend="fused", **kw)).to(DEVICE).eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def inputs(core, b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C_IN, n, n, generator=g).to(DEVICE)
    st = {"ssm": torch.randn(b, core.state_channels, n, n, generator=g).to(DEVICE)}
    mask = (torch.rand(b, n, n, generator=g) < 0.2).to(DEVICE)
    return x, st, mask


N = 11 if DEVICE == "cpu" else 64  # 121 cells: one program per head under the interpreter
CASES = [
    ("no motion", None, "bilinear", EXACT_TOL),
    ("integer shift", (1.0, -0.5, 0.0), "bilinear", EXACT_TOL),  # 2 cells along x, -1 along y at 0.5 m
    ("quarter turn", (0.0, 0.0, torch.pi / 2), "bilinear", EXACT_TOL),
    ("turn + shift, bilinear", (0.73, 0.31, 0.2), "bilinear", BILINEAR_TOL),
    ("turn + shift, nearest", (0.73, 0.31, 0.2), "nearest", EXACT_TOL),
    ("per-batch motion", torch.tensor([[0.3, 0.1, 0.05], [-2.0, 1.3, -0.4]], dtype=torch.float64), "bilinear",
     BILINEAR_TOL),
]


@pytest.mark.parametrize("name,motion,mode,tol", CASES, ids=[c[0] for c in CASES])
def test_fused_warp_step_matches_reference(name, motion, mode, tol):
    ref, fused = pair()
    grid = BevGrid.square(N, 0.5)
    x, st, mask = inputs(ref, 2, N)
    dt = torch.tensor([0.1, 0.25], device=DEVICE)
    with torch.no_grad():
        for reset in ((None, mask) if DEVICE == "cuda" or "turn" in name else (mask,)):
            y_r, s_r = ref.warp_step(x, st, motion, dt, reset, grid, mode)
            y_f, s_f = fused.warp_step(x, st, motion, dt, reset, grid, mode)
            assert (s_r["ssm"] - s_f["ssm"]).abs().max().item() < tol, name
            assert (y_r - y_f).abs().max().item() < tol, name
    if motion is not None:  # the motion really moved the state (entering cells start from zero)
        assert (s_r["ssm"] - ref.step(x, st, dt)[1]["ssm"]).abs().max().item() > 1e-2


def test_fused_step_is_the_protocol_step_and_streams():
    ref, fused = pair()
    x, st, mask = inputs(ref, 1, N, seed=3)
    xs = torch.stack([x, x * 0.5, -x])
    dts = torch.tensor([[0.1], [0.3], [1e9]], device=DEVICE)
    masks = torch.stack([mask, ~mask, mask])
    with torch.no_grad():
        y_r, s_r = ref.forward_sequence(xs, dts, masks, st)
        y_f, s_f = fused.forward_sequence(xs, dts, masks, st)
    assert torch.isfinite(s_f["ssm"]).all()
    assert (s_r["ssm"] - s_f["ssm"]).abs().max().item() < 1e-5
    assert (y_r - y_f).abs().max().item() < 1e-5


def test_fused_backend_is_inference_only():
    _, fused = pair()
    x, st, _ = inputs(fused, 1, 4)
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.step(x, st, torch.tensor([0.1], device=DEVICE))


@pytest.mark.parametrize("block,p_per", [(64, 3)] if DEVICE == "cpu" else [(64, 3), (32, 1)])
def test_fused_kernel_block_shapes_agree(block, p_per):
    """The kernel split into programs of BLOCK cells x P_PER headdim rows (what the GPU autotuner
    chooses between) computes the same thing as one program per head; 3 does not divide 16.
    Bit-exact under the interpreter; compiled shapes may contract multiply-adds differently (seen
    on the H100: not bit-equal), so the bound is rounding-level while a wrong slice would be O(1)."""
    from ssm_perception.temporal import fused_step

    ref, _ = pair()
    grid = BevGrid.square(N, 0.5)
    x, st, mask = inputs(ref, 1, N, seed=5)
    dt = torch.tensor([0.2], device=DEVICE)
    with torch.no_grad():
        u = ref._pre(x)
        z, xs, b, c, step = ref._project(u, dt)
        warp = fused_step.warp_params((0.73, 0.31, 0.2), grid, 1, "bilinear")
        common = (st["ssm"], z, xs, b, c, step, ref.A(), ref.D, ref.nheads, ref.headdim, ref.d_state, ref.ngroups, warp,
                  mask)
        y1, h1 = fused_step.fused_warp_step(*common, config={"BLOCK": 128, "P_PER": ref.headdim})
        y2, h2 = fused_step.fused_warp_step(*common, config={"BLOCK": block, "P_PER": p_per})
    assert (h1 - h2).abs().max().item() < 1e-6
    assert (y1 - y2).abs().max().item() < 1e-6


def test_fused_kernel_cache_hints_and_launch_options_keep_the_result():
    """The sweep's other knobs (scripts/gpu_fused_sweep.py): L2 eviction hints, the streaming store
    and Triton's num_warps/num_stages change how memory is used, never the numbers (bit-equal under
    the interpreter, which ignores them; rounding-level when compiled). Unknown keys are refused."""
    from ssm_perception.temporal import fused_step

    ref, _ = pair()
    grid = BevGrid.square(N, 0.5)
    x, st, mask = inputs(ref, 1, N, seed=6)
    dt = torch.tensor([0.1], device=DEVICE)
    with torch.no_grad():
        z, xs, b, c, step = ref._project(ref._pre(x), dt)
        warp = fused_step.warp_params((0.41, -0.27, 0.1), grid, 1, "bilinear")
        common = (st["ssm"], z, xs, b, c, step, ref.A(), ref.D, ref.nheads, ref.headdim, ref.d_state, ref.ngroups, warp,
                  mask)
        y1, h1 = fused_step.fused_warp_step(*common, config={"BLOCK": 128, "P_PER": ref.headdim})
        y2, h2 = fused_step.fused_warp_step(*common, config={
            "BLOCK": 128, "P_PER": ref.headdim, "PREV_EVICT": "evict_first", "IN_EVICT": "evict_last",
            "NEW_CACHE": ".cs", "num_warps": 2, "num_stages": 1})
        _, s_r = ref.warp_step(x, st, (0.41, -0.27, 0.1), dt, mask, grid)
        with pytest.raises(ValueError, match="unknown fused-step config keys"):
            fused_step.fused_warp_step(*common, config={"BLOCK": 128, "num_warp": 4})
    assert (h1 - h2).abs().max().item() < 1e-6 and (y1 - y2).abs().max().item() < 1e-6
    assert (s_r["ssm"] - h2).abs().max().item() < BILINEAR_TOL  # and it is the reference's warp + step
    assert set(fused_step.LAUNCH_KEYS) >= {"BLOCK", "P_PER", "num_warps", "num_stages"}


# The kernel variants the sweep tries (scripts/gpu_fused_sweep.py stage 'variants'; the pipeline
# runs one when fused_launch.json names it for the GPU). Each case covers what its launch adds: the
# 'cells' kernel striding over 2-D tiles (persistent: fewer programs than tiles; 16x8 tiles on an
# 11x11 grid: masked columns and rows), a headdim loop whose last iteration is partly masked (P_PER 3
# does not divide 8 nor 4), heads in pairs, blocks of consecutive cells, each head's rows split over
# 2 programs, the reset mask, several batch items, no motion; LANES=1 in both kernels. A smaller model (4 heads of
# 8 rows) keeps the interpreter's time down.
SMALL = {"d_model": 16, "headdim": 8}
VARIANT_CASES = [
    ("cells, 2-D tiles, persistent, 2 heads, masked rows", {
        "VARIANT": "cells", "BLOCK": 128, "TILE_W": 16, "P_PER": 3, "HEADS_PER": 2, "LANES": 1, "PERSIST": 1},
     (0.73, 0.31, 0.2), "bilinear", 1),
    ("cells, consecutive cells, rows split in 2, nearest", {
        "VARIANT": "cells", "BLOCK": 64, "P_PER": 3, "HEADS_PER": 2, "RSPLIT": 2}, (0.73, 0.31, 0.2), "nearest", 1),
    ("cells, all heads, no motion, 2 items", {"VARIANT": "cells", "BLOCK": 128, "P_PER": 8, "HEADS_PER": 4},
     None, "bilinear", 2),
    ("rows, one cell per lane, nearest", {"VARIANT": "rows", "BLOCK": 128, "P_PER": 8, "LANES": 1},
     (0.73, 0.31, 0.2), "nearest", 1),
]


@pytest.mark.parametrize("name,cfg,motion,mode,bsz", VARIANT_CASES, ids=[c[0] for c in VARIANT_CASES])
def test_fused_kernel_variants_match_reference(name, cfg, motion, mode, bsz):
    """Every kernel variant gives the reference's warped + updated state (the parity tolerance of
    the tests above) and the default kernel's gated output; rounding-level apart when compiled."""
    from ssm_perception.temporal import fused_step

    ref, _ = pair(**SMALL)
    assert (ref.nheads, ref.headdim, ref.ngroups) == (4, 8, 1)  # what the cases above are written for
    grid = BevGrid.square(N, 0.5)
    x, st, mask = inputs(ref, bsz, N, seed=7)
    dt = torch.tensor([0.2, 0.05][:bsz], device=DEVICE)
    with torch.no_grad():
        z, xs, b, c, step = ref._project(ref._pre(x), dt)
        warp = None if motion is None else fused_step.warp_params(motion, grid, bsz, mode)
        common = (st["ssm"], z, xs, b, c, step, ref.A(), ref.D, ref.nheads, ref.headdim, ref.d_state, ref.ngroups, warp,
                  mask)
        y1, h1 = fused_step.fused_warp_step(*common, config={"BLOCK": 128, "P_PER": ref.headdim})
        y2, h2 = fused_step.fused_warp_step(*common, config=cfg)
        if motion is None:
            _, s_r = ref.step(x, {"ssm": st["ssm"]}, dt, mask)
        else:
            _, s_r = ref.warp_step(x, st, motion, dt, mask, grid, mode)
    tol = BILINEAR_TOL if mode == "bilinear" and motion is not None else EXACT_TOL
    assert (s_r["ssm"] - h2).abs().max().item() < tol, name
    assert (h1 - h2).abs().max().item() < 1e-6 and (y1 - y2).abs().max().item() < 1e-6, name


def test_fused_kernel_variant_configs_are_checked():
    from ssm_perception.temporal import fused_step

    ref, _ = pair()
    x, st, _ = inputs(ref, 1, 4)
    with torch.no_grad():
        z, xs, b, c, step = ref._project(ref._pre(x), torch.tensor([0.1], device=DEVICE))
        common = (st["ssm"], z, xs, b, c, step, ref.A(), ref.D, ref.nheads, ref.headdim, ref.d_state, ref.ngroups)
        for cfg, words in (({"VARIANT": "tiles"}, "unknown fused-step VARIANT"),
                           ({"VARIANT": "cells", "HEADS_PER": 3}, "HEADS_PER must divide"),
                           ({"VARIANT": "cells", "BLOCK": 64, "TILE_W": 24}, "TILE_W must be a power of two"),
                           ({"VARIANT": "cells", "BLOCK": 16, "TILE_W": 32}, "TILE_W must be a power of two"),
                           ({"VARIANT": "cells", "RSPLIT": 3}, "RSPLIT must divide"),
                           ({"HEADS_PER": 2}, "need VARIANT 'cells'"), ({"TILE_W": 8}, "need VARIANT 'cells'")):
            with pytest.raises(ValueError, match=words):
                fused_step.fused_warp_step(*common, config=cfg)
    assert set(fused_step.VARIANTS) == {"rows", "cells"} and "VARIANT" in fused_step.LAUNCH_KEYS

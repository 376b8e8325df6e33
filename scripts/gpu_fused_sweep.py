#!/usr/bin/env python3
"""Sweep the fused warp + state-update kernel's launch configurations on the GPU (issue 5 target:
the temporal update at 200x200 within 2x of the memory-bandwidth bound of the state bytes).

For each configuration (cells per program BLOCK, headdim rows per program P_PER, num_warps,
num_stages, and the kernel's cache hints PREV_EVICT / IN_EVICT / NEW_CACHE, see
temporal/fused_step.py) it compiles the kernel, checks one bilinear-warped step against the
PyTorch reference (warp_state + MambaCore._ssm_step_reference, max abs error), and times it
captured in a CUDA graph, the same way scripts/gpu_check.py timed 'fused/update/cuda_graph'
(CUDA events around each replay, idle queue before each: latency) plus a graph of 10 launches
(throughput per launch). A configuration that fails to compile or run is recorded with its
error and the sweep goes on; the JSON is rewritten after every configuration, so a run cut
short still leaves its results. The sweep stops at --budget-s (default 140 s, which keeps the
whole run near 2 minutes) and records what it skipped. The baseline row is the autotuner itself
(SSM_PERCEPTION_FUSED_AUTOTUNE=1: the per-GPU table in temporal/fused_launch.json is ignored);
--write-table writes that table with this GPU's winner merged in (the pipeline then launches it
without autotuning on every GPU of that model).

Order: (1) the autotuned default (fused_step._CONFIGS: 'rows' kernel), (2) the previous H200
winners (ANCHORS), (3) the kernel variants (VARIANT 'cells', LANES, HEADS_PER, PERSIST; the likely
winners first, until 60 % of the budget), (4) the 'rows' block shapes x num_warps (until 75 %), (5)
the cache-hint variants and num_stages of the 3 fastest configurations so far. Every row records
its kernel ('variant'), its ratio to the bound of the state bytes (the target's) and to the bound of
all the bytes the step must move (state + x, z, y, B, C, step: 'ratio_to_all_io_bound').

    python3 scripts/gpu_fused_sweep.py                       # GPU machine: writes $OUT/gpu_fused_sweep.json
    python3 scripts/gpu_fused_sweep.py --list                # the configuration list, no GPU needed
    python3 scripts/gpu_fused_sweep.py --device cpu --size 6 --max-configs 2 --iters 2 -o /tmp/s.json
                                                             # logic smoke test under TRITON_INTERPRET=1

The best correct configuration is printed as a dict for ``fused_step.fused_warp_step(config=...)``
(or as a ``triton.Config`` for fused_step._CONFIGS).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

FORMAT = "ssm_perception.gpu_fused_sweep/1"
BLOCKS = (64, 128, 256, 512, 1024)
P_PERS = (1, 2, 4, 8)  # 8: fewer re-reads of step/B/C per state byte (suspected limit on the H200)
WARPS = (2, 4, 8)
# (PREV_EVICT, IN_EVICT, NEW_CACHE); the first is Triton's default (no hint)
HINTS = [(pe, ie, nc) for pe, ie, nc in itertools.product(("", "evict_first"), ("", "evict_last"), ("", ".cs"))]
STAGES = (1, 2)  # num_stages besides Triton's default (3); the kernel has no pipelined loop, so expect no change
MAX_VARIANTS = 120  # of stage 'variants' (the budget ends it after ~60 on an H200)
TOP_SHAPES = 3  # fastest configurations (any stage) whose hint variants are tried
# The H200 winners of the previous sweep (results/gpu_fused_sweep_h200.json, 2.46x and 2.49x the
# bound): re-measured first in every run, so the new variants are compared within one run.
ANCHORS = ({"BLOCK": 512, "P_PER": 1, "num_warps": 4, "num_stages": 1},
           {"BLOCK": 256, "P_PER": 1, "num_warps": 2, "num_stages": 1})
DEFAULT_TOL = 1e-3  # fp32 warp coordinates: the fused step matched the reference to ~1e-4 (gpu_parity.json)


def shape_configs() -> list[dict]:
    """Stage 2: block shapes x num_warps, the shape the autotuner picked on the H100 first
    (BLOCK 256, P_PER 1, 4 warps), then by distance from it, so a cut-short sweep keeps the likely ones."""
    out = []
    for block, p_per, warps in itertools.product(BLOCKS, P_PERS, WARPS):
        if block == 1024 and (p_per > 2 or warps < 4):  # 8k+ elements per program with few warps: spills
            continue
        if block * 8 < 32 * warps:  # fewer state elements (d_state 8) than threads
            continue
        out.append({"BLOCK": block, "P_PER": p_per, "num_warps": warps})

    def distance(c: dict) -> tuple:
        return (abs(BLOCKS.index(c["BLOCK"]) - 2) + P_PERS.index(c["P_PER"]) + abs(WARPS.index(c["num_warps"]) - 1),
                c["BLOCK"], c["P_PER"], c["num_warps"])

    return sorted(out, key=distance)


def variant_configs() -> list[dict]:
    """Stage 'variants' (see temporal/fused_step.py): the 'rows' kernel with one cell per thread
    (LANES=1), and the 'cells' kernel (a program per cell block and HEADS_PER heads, looping over
    the headdim rows P_PER at a time; B, C, step and the warp's taps once per cell instead of once
    per row) x LANES x BLOCK and num_warps x TILE_W (2-D tiles; 0 = consecutive cells) x HEADS_PER x
    P_PER x RSPLIT (a head's rows over RSPLIT programs) x persistent grid (PERSIST programs per SM)
    (num_stages 1: compiled for sm_90, 3 stages give the same SASS, the row loop is not pipelined;
    the hints stage tries the others on the winners), ordered by distance from the configuration
    expected to win (one cell per thread, 256 cells, 4 warps, one head, one row per iteration, rows
    not split, not persistent; consecutive cells and 32-wide tiles alike), so a sweep cut short by
    its budget keeps the likely winners. At most MAX_VARIANTS."""
    out = [{"VARIANT": "rows", "BLOCK": b, "P_PER": 1, "LANES": 1, "num_warps": w, "num_stages": 1}
           for b, w in ((512, 4), (256, 2), (128, 4), (256, 4))]
    shapes = [(256, 4), (128, 4), (256, 2), (128, 2), (512, 8), (512, 4), (256, 8), (64, 2)]
    cells = []
    for lanes, shape, hp, p_per, persist, stages, rsplit, tile_w in itertools.product(
            (1, 0), shapes, (1, 4, 2), (1, 2, 4), (0, 4), (1,), (1, 2, 4), (0, 32, 16)):
        if tile_w and not lanes:  # a tile's cell indices are never provably contiguous: LANES changes nothing
            continue
        cfg = {"VARIANT": "cells", "BLOCK": shape[0], "P_PER": p_per, "HEADS_PER": hp, "LANES": lanes,
               "num_warps": shape[1], "num_stages": stages}
        if tile_w:
            cfg["TILE_W"] = tile_w
        if rsplit > 1:
            cfg["RSPLIT"] = rsplit
        if persist:
            cfg["PERSIST"] = persist
        score = ((1, 2, 4).index(rsplit) + (1 - lanes) + shapes.index(shape) // 2 + (1, 4, 2).index(hp) + (1, 2, 4).index(p_per)
                 + (2 if persist else 0) + (2 if stages == 3 else 0) + (0, 0, 1)[(0, 32, 16).index(tile_w)])
        cells.append((score, len(cells), cfg))
    return (out + [c for _, _, c in sorted(cells, key=lambda t: t[:2])])[:MAX_VARIANTS]


def hint_configs(shapes: list[dict]) -> list[dict]:
    """Stage 3: every cache-hint variant and the other num_stages of the given (fastest) shapes."""
    out = []
    for s in shapes:
        base = {k: v for k, v in s.items() if k not in ("PREV_EVICT", "IN_EVICT", "NEW_CACHE", "num_stages")}
        for pe, ie, nc in HINTS[1:]:
            out.append({**base, "PREV_EVICT": pe, "IN_EVICT": ie, "NEW_CACHE": nc})
        for st in STAGES:
            out.append({**base, "num_stages": st})
    return out


def config_label(cfg: dict | None) -> str:
    if cfg is None:
        return "autotuned"
    short = {"BLOCK": "B", "P_PER": "P", "num_warps": "w", "num_stages": "s", "PREV_EVICT": "prev",
             "IN_EVICT": "in", "NEW_CACHE": "st", "HEADS_PER": "hp", "LANES": "L", "PERSIST": "pk", "TILE_W": "tw",
             "RSPLIT": "rs"}
    return " ".join(str(v) if k == "VARIANT" else f"{short.get(k, k)}={v}" for k, v in cfg.items()
                    if v != "" and not (k == "VARIANT" and v == "rows"))


def write_json(result: dict, path: Path) -> None:
    """Atomic rewrite: a run killed mid-write never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", type=int, default=200, help="grid cells per side (default 200)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu = logic smoke test under Triton's interpreter (no timings worth reading)")
    ap.add_argument("-o", "--output", default="",
                    help="JSON path; default $OUT/gpu_fused_sweep.json, else results/gpu_fused_sweep.json")
    ap.add_argument("--iters", type=int, default=100, help="timed graph replays per configuration")
    ap.add_argument("--budget-s", type=float, default=100.0,
                    help="stop sweeping after this many seconds (default 100: the whole run stays near 2 minutes)")
    ap.add_argument("--max-configs", type=int, default=0, help="at most this many configurations (0 = all)")
    ap.add_argument("--tol", type=float, default=DEFAULT_TOL, help="max abs error vs the reference to count as correct")
    ap.add_argument("--list", action="store_true", help="print the configuration list and exit")
    ap.add_argument("--write-table", action="store_true",
                    help="also write fused_launch.json (the package's per-GPU launch table with this GPU's winner "
                         "merged in) next to the output; copy it to ssm_perception/temporal/fused_launch.json")
    a = ap.parse_args(argv)
    if a.size < 2 or a.iters < 1 or a.budget_s <= 0 or a.max_configs < 0 or a.tol <= 0:
        ap.error("--size >= 2, --iters >= 1, --budget-s > 0, --max-configs >= 0 and --tol > 0 are required")
    return a


def output_path(arg: str) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_fused_sweep.json"
    return Path(__file__).resolve().parents[1] / "results" / "gpu_fused_sweep.json"


# --------------------------------------------------------------------------------------- the run
class Sweep:
    """Inputs, the reference and the timing of one configuration at one grid size."""

    def __init__(self, size: int, device: str, iters: int, tol: float):
        import torch
        from gpu_check import C_IN, MOTION, copy_bandwidth, make_cores

        from ssm_perception.bev.grid import BevGrid
        from ssm_perception.temporal import fused_step
        from ssm_perception.temporal.warp import warp_state

        self.torch, self.fused_step, self.device, self.iters, self.tol = torch, fused_step, device, iters, tol
        core = make_cores(device, ["reference"])["reference"]  # same weights and seed as gpu_check.py
        grid = BevGrid.square(size, 0.5)
        g = torch.Generator().manual_seed(size)
        x = torch.randn(1, C_IN, size, size, generator=g).to(device)
        self.prev = (torch.randn(1, core.state_channels, size, size, generator=g) * 0.5).to(device)
        dt = torch.tensor([0.1], device=device)
        with torch.no_grad():
            self.z, self.xs, self.b, self.c, self.step = core._project(core._pre(x), dt)
            warped = warp_state({"ssm": self.prev}, MOTION, grid)["ssm"]
            self.y_ref, self.h_ref = core._ssm_step_reference(warped, self.z, self.xs, self.b, self.c, self.step)
        self.A, self.D = core.A().detach(), core.D.detach().float()
        self.dims = (core.nheads, core.headdim, core.d_state, core.ngroups)
        aff, bilinear = fused_step.warp_params(MOTION, grid, 1, "bilinear")
        self.warp = (aff.to(device), bilinear)  # on the device: no host copy inside a CUDA graph capture
        self.y_buf = torch.empty_like(self.y_ref, memory_format=torch.contiguous_format)
        self.h_buf = torch.empty_like(self.prev)
        self.bandwidth = copy_bandwidth(device) if device == "cuda" else None  # no bound on CPU
        self.state_bytes = 2 * core.state_bytes_per_cell() * size * size  # read once + write once
        self.bound_ms = self.state_bytes / self.bandwidth * 1e3 if self.bandwidth else None
        # What the kernel must move besides the state (the target's bound leaves it out): x and z
        # read, y written (fp32, nheads*headdim each), B and C (ngroups*d_state) and step (nheads) read
        rows = core.nheads * core.headdim
        io = {"state_read": core.state_bytes_per_cell(), "state_write": core.state_bytes_per_cell(),
              "x_z_read": 2 * rows * 4, "y_write": rows * 4, "b_c_read": 2 * core.ngroups * core.d_state * 4,
              "step_read": core.nheads * 4}
        self.all_bytes = sum(io.values()) * size * size
        self.all_bound_ms = self.all_bytes / self.bandwidth * 1e3 if self.bandwidth else None
        self.meta = {"size": size, "cells": size * size, "motion_dx_dy_dyaw": list(MOTION),
                     "model": {"nheads": core.nheads, "headdim": core.headdim, "d_state": core.d_state,
                               "ngroups": core.ngroups, "state_bytes_per_cell": core.state_bytes_per_cell()},
                     "copy_bandwidth_Bps": self.bandwidth, "bound_state_bytes": self.state_bytes,
                     "bound_ms_measured_bw": self.bound_ms, "tolerance": tol,
                     "bytes_per_cell_all_io": io, "bound_all_io_bytes": self.all_bytes,
                     "bound_ms_all_io": self.all_bound_ms}

    def launch(self, cfg: dict | None):
        nh, p, ds, ng = self.dims
        return self.fused_step.fused_warp_step(self.prev, self.z, self.xs, self.b, self.c, self.step, self.A, self.D,
                                               nh, p, ds, ng, self.warp, None, out=(self.y_buf, self.h_buf),
                                               config=cfg)

    def healthy(self) -> bool:
        """False once the CUDA context is broken (an illegal access poisons every later call)."""
        try:
            if self.device == "cuda":
                self.torch.cuda.synchronize()
            return True
        except Exception:  # noqa: BLE001 - the answer is the point
            return False

    def measure(self, cfg: dict | None) -> dict:
        from gpu_check import err, graphed, time_fn

        torch = self.torch
        r: dict = {"label": config_label(cfg), "variant": (cfg or {}).get("VARIANT", "rows"), "config": cfg}
        t0 = time.perf_counter()
        try:
            self.y_buf.fill_(float("nan"))  # a kernel that writes nothing must not pass on stale buffers
            self.h_buf.fill_(float("nan"))
            with torch.no_grad():
                self.launch(cfg)
            if self.device == "cuda":
                torch.cuda.synchronize()
            r["compile_and_first_run_s"] = round(time.perf_counter() - t0, 3)
            r["max_err_y"] = err(self.y_buf, self.y_ref)
            r["max_err_state"] = err(self.h_buf, self.h_ref)
            ok = max(r["max_err_y"], r["max_err_state"]) <= self.tol  # NaN compares False: wrong
            r["status"] = "ok" if ok else "wrong"
            if cfg is None:
                r["autotuned_config"] = self.fused_step.best_config()
            one = graphed(lambda: self.launch(cfg), self.device)
            if one is None:  # CPU smoke test: plain calls
                one = lambda: self.launch(cfg)
            lat = time_fn(one, self.device, self.iters, warmup=3)
            r.update(p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"], mean_ms=lat["mean_ms"])
            r["ratio_to_bound"] = round(lat["p50_ms"] / self.bound_ms, 3) if self.bound_ms else None
            r["ratio_to_all_io_bound"] = round(lat["p50_ms"] / self.all_bound_ms, 3) if self.all_bound_ms else None
            ten = graphed(lambda: [self.launch(cfg) for _ in range(10)], self.device)
            if ten is not None:
                r["loop_ms_per_launch"] = round(time_fn(ten, self.device, max(3, self.iters // 10), warmup=2)["p50_ms"]
                                                / 10, 5)
                r["loop_ratio_to_bound"] = round(r["loop_ms_per_launch"] / self.bound_ms, 3)
        except Exception as exc:  # noqa: BLE001 - Triton raises its own types; recorded, the sweep goes on
            r["status"] = "error"
            r["error"] = f"{type(exc).__name__}: {exc}"[:600]
        r["seconds"] = round(time.perf_counter() - t0, 3)
        return r


def environment(device: str) -> dict:
    from gpu_check import versions

    env = versions()
    env["device_kind"] = device
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "")
    return env


def best_of(rows: list[dict], key: str = "p50_ms") -> dict | None:
    """The fastest correct explicit configuration (the autotuned row is the baseline, not a candidate)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(key) is not None and r.get("config")]
    return min(ok, key=lambda r: r[key]) if ok else None


def summary(result: dict) -> str:
    rows = sorted((r for r in result["configs"] if r.get("p50_ms") is not None), key=lambda r: r["p50_ms"])
    m = result["meta"]
    bound = (f"bound {m['bound_ms_measured_bw']:.4f} ms at {m['copy_bandwidth_Bps'] / 1e12:.2f} TB/s"
             if m["bound_ms_measured_bw"] else "no bandwidth bound (not on a GPU)")
    lines = [f"{m['size']}^2, {result['env'].get('device', result['env']['device_kind'])}: {bound}",
             f"{'config':58s} {'p50 ms':>8s} {'x bound':>8s} {'loop ms':>8s} {'x bnd':>6s} {'err':>8s} status"]
    for r in rows:
        e = max(r.get("max_err_y", float("nan")), r.get("max_err_state", float("nan")))
        lines.append(f"{r['label']:58s} {r['p50_ms']:8.4f} {r.get('ratio_to_bound') or float('nan'):8.3f} "
                     f"{r.get('loop_ms_per_launch', float('nan')):8.4f} {r.get('loop_ratio_to_bound', float('nan')):6.3f}"
                     f" {e:8.1e} {r['status']}")
    bad = [r for r in result["configs"] if r.get("status") == "error"]
    for r in bad:
        lines.append(f"{r['label']:58s} error: {r['error'][:100]}")
    lines.append(f"{len(result['configs'])} run, {len(bad)} failed, {len(result['skipped'])} skipped (budget or "
                 "--max-configs), "
                 f"{result['wall_s']} s")
    auto = next((r for r in result["configs"] if r.get("config") is None and r.get("p50_ms") is not None), None)
    if auto:
        lines.append(f"autotuned baseline: {auto.get('autotuned_config')}  p50 {auto['p50_ms']:.4f} ms = "
                     f"{auto.get('ratio_to_bound')}x bound")
    b = result.get("best")
    if b:
        lines.append(f"best: {b['label']}  p50 {b['p50_ms']:.4f} ms = {b.get('ratio_to_bound')}x bound "
                     f"({b.get('ratio_to_all_io_bound')}x the bound of all its bytes)")
        lines.append(f"BEST_CONFIG = {json.dumps(b['config'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: Path) -> dict:
    t_start = time.perf_counter()
    sweep = Sweep(args.size, args.device, args.iters, args.tol)
    result = {"format": FORMAT, "env": environment(args.device), "meta": sweep.meta,
              "timing": "p50_ms: CUDA events around each replay of a one-launch CUDA graph, idle queue before "
                        "each (as gpu_check.py); loop_ms_per_launch: a graph of 10 launches / 10",
              "configs": [], "skipped": [], "best": None, "wall_s": 0.0}
    limit = args.max_configs or 10**9
    deadline = t_start + args.budget_s

    def do(cfgs: list, stage: str, stage_deadline: float) -> None:
        for cfg in cfgs:
            if len(result["configs"]) >= limit or time.perf_counter() > stage_deadline or result.get("aborted"):
                result["skipped"].append(config_label(cfg))
                continue
            r = sweep.measure(cfg)
            r["stage"] = stage
            result["configs"].append(r)
            if r["status"] == "error" and not sweep.healthy():
                result["aborted"] = f"CUDA context broken after {r['label']}: {r['error'][:200]}"
            result["best"] = best_of(result["configs"])
            result["wall_s"] = round(time.perf_counter() - t_start, 1)
            write_json(result, out)
            print(f"[{result['wall_s']:6.1f} s] {r['label']:58s} {r['status']:6s} "
                  f"{r.get('p50_ms', float('nan')):.4f} ms", flush=True)

    do([None], "autotuned", deadline)
    do([dict(c) for c in ANCHORS], "anchors", deadline)
    do(variant_configs(), "variants", t_start + 0.6 * args.budget_s)
    seen = {config_label(r["config"]) for r in result["configs"]}
    do([c for c in shape_configs() if config_label(c) not in seen], "shapes", t_start + 0.75 * args.budget_s)
    ranked = sorted((r for r in result["configs"] if r["stage"] != "autotuned" and r["status"] == "ok"
                     and r.get("p50_ms") is not None), key=lambda r: r["p50_ms"])
    do(hint_configs([r["config"] for r in ranked[:TOP_SHAPES]]), "hints", deadline)
    result["best"] = best_of(result["configs"])
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_json(result, out)
    return result


def write_table(result: dict, path: Path) -> dict:
    """The package's launch table with this GPU model's winner merged in (key: the device name)."""
    from ssm_perception.temporal.fused_step import LAUNCH_TABLE

    table = json.loads(LAUNCH_TABLE.read_text())
    b = result["best"]
    name = result["env"].get("device") or "unknown"
    table["devices"][name] = {"config": b["config"], "p50_ms": b["p50_ms"], "ratio_to_bound": b.get("ratio_to_bound"),
                              "source": f"scripts/gpu_fused_sweep.py, {len(result['configs'])} configurations, "
                                        f"{result['meta']['size']}x{result['meta']['size']}, CUDA graph replays"}
    write_json(table, path)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        cfgs = shape_configs()
        print(f"stage 'shapes': {len(cfgs)} configurations")
        for c in cfgs:
            print("  " + config_label(c))
        hints = hint_configs(cfgs[:1])
        print(f"stage 'hints': {len(hints)} per shape, for the {TOP_SHAPES} fastest shapes, e.g.")
        for c in hints:
            print("  " + config_label(c))
        return 0
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (gpu_check imports fused_step)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check.py beside this file
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this sweep is for the GPU machine (--device cpu for a logic smoke test)",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    torch.backends.cudnn.allow_tf32 = False
    os.environ["SSM_PERCEPTION_FUSED_AUTOTUNE"] = "1"  # the baseline row is the autotuner, not the table
    out = output_path(args.output)
    result = run(args, out)
    print(summary(result))
    print(f"wrote {out}")
    if args.write_table and result.get("best") and args.size == 200:
        table_path = out.with_name("fused_launch.json")
        write_table(result, table_path)
        print(f"wrote {table_path}: copy it to ssm_perception/temporal/fused_launch.json")
    return 0 if result.get("best") else 1


if __name__ == "__main__":
    sys.exit(main())

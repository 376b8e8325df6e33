#!/usr/bin/env python3
"""Compile the fused warp + state-update kernel for a GPU architecture without a GPU and report
what decides its memory behaviour: registers per thread, local-memory spills, shared memory, the
register layouts Triton chose for the [cells, d_state] tiles (which lanes hold which cells), the
number of layout conversions, and the global load/store instructions by width (LDG.E = 4-byte
scalar, LDG.E.128 = 16-byte vector) in the SASS.

Triton compiles to PTX with its bundled LLVM and to SASS with its bundled ptxas, so this runs on a
CPU machine; it times nothing (scripts/gpu_fused_sweep.py does, on the GPU). Made for issue 21 item 5:
it shows that the 'rows' kernel's bilinear gathers are 4-byte loads of 4 consecutive cells per
thread (lanes 16 B apart) and what LANES=1 and the 'cells' variant change.

    python3 scripts/fused_static_check.py                                 # anchors + first variants
    python3 scripts/fused_static_check.py --config '{"VARIANT": "cells", "BLOCK": 256, "P_PER": 1, "LANES": 1}'
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PTRS = 12  # the kernels' leading pointer arguments (prev .. reset)
INTS = ("H", "W", "HW", "s_prev_b", "s_new_b", "s_y_b", "s_x_b", "s_z_b", "s_b_b", "s_c_b", "s_step_b", "nprog")
DIVISIBLE = ("HW", "s_prev_b", "s_new_b", "s_y_b", "s_x_b", "s_z_b", "s_b_b", "s_c_b", "s_step_b")  # 40000 % 16 == 0


def compile_report(cfg: dict, size: int = 200, arch: int = 90, dims: tuple = (4, 16, 8, 1)) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ssm_perception.temporal import fused_step as fs

    cfg = dict(cfg)
    variant = cfg.pop("VARIANT", "rows")
    warps, stages = cfg.pop("num_warps", 4), cfg.pop("num_stages", 3)
    persist = cfg.pop("PERSIST", 0)
    kernel = fs._fused_warp_step_kernel if variant == "rows" else fs._fused_cells_kernel
    params = inspect.signature(kernel.fn).parameters
    names = list(params)
    nheads, headdim, d_state, ngroups = dims
    const = {"NHEADS": nheads, "HEADDIM": headdim, "DSTATE": d_state, "NGROUPS": ngroups, "WARP": True,
             "BILINEAR": True, "HAS_RESET": False, **cfg}
    if variant == "cells":
        nblocks = math.ceil(size * size / cfg["BLOCK"])
        nprog = min(nblocks, math.ceil(persist * 132 / (nheads // cfg.get("HEADS_PER", 1)))) if persist else nblocks
        const["NITER"] = math.ceil(nblocks / nprog)
    for n, prm in params.items():  # constexpr defaults (HEADS_PER, LANES, hints) as the launcher leaves them
        if prm.default is not inspect.Parameter.empty:
            const.setdefault(n, prm.default)
    sig = {n: ("*u8" if n == "reset_ptr" else "*fp32") for n in names[:PTRS]}
    sig.update({n: "i32" for n in INTS if n in names})
    sig.update({n: "constexpr" for n in const})
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names[:PTRS] + list(DIVISIBLE)}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()},
                    attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    ttgir = ck.asm["ttgir"]
    return {"config": {"VARIANT": variant, **cfg, "num_warps": warps, "num_stages": stages,
                       **({"PERSIST": persist} if persist else {})},
            "arch": f"sm_{arch}", "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "local_bytes": int(re.search(r"LOCAL:(\d+)", usage).group(1)), "shared_bytes": ck.metadata.shared,
            "layout_conversions": ttgir.count("convert_layout"),
            "layouts": sorted(set(re.findall(r"#ttg\.blocked<\{([^}]*)\}>", ttgir))),
            "global_loads": dict(Counter("LDG.E" + w for w in re.findall(r"\bLDG\.E(\S*)", sass))),
            "global_stores": dict(Counter("STG.E" + w for w in re.findall(r"\bSTG\.E(\S*)", sass))),
            "sass_instructions": len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, re.MULTILINE))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", action="append", default=[], help="launch config as JSON (repeatable)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default 90: H100/H200)")
    ap.add_argument("--first-variants", type=int, default=4,
                    help="without --config: the sweep's anchors and this many of its first variants")
    a = ap.parse_args(argv)
    if a.config:
        try:
            cfgs = [json.loads(c) for c in a.config]
        except ValueError as exc:
            ap.error(f"--config is not JSON: {exc}")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import gpu_fused_sweep as sw

        cfgs = [dict(c) for c in sw.ANCHORS] + sw.variant_configs()[:a.first_variants]
    for cfg in cfgs:
        try:
            print(json.dumps(compile_report(cfg, arch=a.arch)), flush=True)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
            print(json.dumps({"config": cfg, "error": f"{type(exc).__name__}: {str(exc)[-400:]}"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

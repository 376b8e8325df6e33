#!/usr/bin/env python3
"""Generate the trainer's data cache on many cores: H hours of simulated driving, N worker processes.

    python scripts/gen_train_data.py --hours 4 --jobs 16                       # randomised sensors/scenes
    python scripts/gen_train_data.py --hours 4 --jobs 16 --config config/train_randomised.yaml  # its data section

Each sequence is one simulator run (preset, seed, --duration seconds) encoded with the pipeline's
BEV encoder into the cache directory that ``ssm-perception train`` reads (train/dataset.py:
the same keys, the same atomic per-sequence directories). Resumable: finished sequences are kept
and skipped; a killed run is continued by running the same command again. Writes a summary JSON
(hours, sensor models, layouts, weather, objects per class, CPU time, simulated seconds per
CPU-second) and prints the ``data:`` section that makes the trainer use these sequences.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path


def _job(args):
    spec, cfg_json, cache_dir, compress = args
    import torch

    torch.set_num_threads(1)  # parallelism comes from the processes
    from ssm_perception.config import PerceptionConfig
    from ssm_perception.train.dataset import build_sequence

    cfg = PerceptionConfig.model_validate_json(cfg_json)
    t0, w0 = time.process_time(), time.perf_counter()
    path = build_sequence(spec, cfg, cache_dir, compress=compress)
    return str(path), time.process_time() - t0, time.perf_counter() - w0


def _clean_stale(cache: Path) -> int:
    """Remove half-written entries (.<key>.<pid>.tmp) of workers that no longer run."""
    n = 0
    for p in cache.glob(".*.tmp"):
        try:
            pid = int(p.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
            continue  # its worker is alive
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(p, ignore_errors=True)
        n += 1
    return n


def summarise(paths: list[Path], extra: dict) -> dict:
    infos = []
    for p in paths:
        f = p / "info.json"
        if f.is_file():
            info = json.loads(f.read_text())
            if "lidar_model" in info:
                infos.append(info)
    objects, object_frames = Counter(), Counter()
    for i in infos:
        objects.update(i.get("objects", {}))
        object_frames.update(i.get("object_frames", {}))
    sim_s = sum(i["duration_s"] for i in infos)
    disk = sum(f.stat().st_size for p in paths for f in p.iterdir() if f.is_file())
    cpu = sum(i.get("cpu_s", 0.0) for i in infos)
    enc = sum(i.get("encode_cpu_s", 0.0) for i in infos)
    out = {
        "sequences": len(paths),
        "sequences_with_info": len(infos),
        "hours": round(sum(json.loads((p / "spec.json").read_text())["duration_s"] for p in paths) / 3600.0, 4),
        "frames": sum(i.get("frames", 0) for i in infos),
        "presets": dict(Counter(i["preset"] for i in infos)),
        "layouts": dict(Counter(i["layout"] for i in infos)),
        "sensor_models": dict(Counter(i["lidar_model"] for i in infos)),
        "intensity_models": dict(Counter(i["intensity_model"] for i in infos)),
        "self_returns": sum(bool(i.get("self_returns")) for i in infos),
        "weather": dict(Counter(w for i in infos for w in i.get("weather", []))),
        "objects_per_class": dict(objects),
        "object_frames_per_class": dict(object_frames),
        "cpu_s": round(cpu, 1),
        "encode_cpu_s": round(enc, 1),
        "sim_s_per_cpu_s": round(sim_s / cpu, 4) if cpu else None,
        "disk_gb": round(disk / 1e9, 3),
        "compressed_sequences": sum((p / "features.zst").is_file() for p in paths),
        # planning: CPU hours per simulated hour, and wall hours for 4 h of driving on 16 busy cores
        "cpu_h_per_sim_h": round(cpu / sim_s, 2) if sim_s else None,
        "projected_wall_h_4h_on_16_cores": round(4.0 * cpu / sim_s / 16.0, 2) if sim_s else None,
    }
    out.update(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, required=True, help="hours of simulated driving to have in the cache")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--presets", nargs="+", default=None,
                    help="round-robin over seeds (train/dataset.py); default: the config's, else randomised")
    ap.add_argument("--duration", type=float, default=None, help="simulated seconds per sequence (default: the "
                                                                  "config's data.duration_s, else 30)")
    ap.add_argument("--seed-start", type=int, default=None, help="default: the config's train_seeds.start, else 0")
    ap.add_argument("--cache-dir", default=None, help="default: the config's data.cache_dir, else out/train_cache")
    ap.add_argument("--config", default="", help="training YAML: its perception grid/sensors key the cache and "
                                                 "its data section gives the defaults above")
    ap.add_argument("--summary", default="", help="summary JSON path (default <cache-dir>/summary.json)")
    ap.add_argument("--no-compress", action="store_true",
                    help="store the per-cell arrays as plain .npy (2.9 MB per frame) instead of zstd frames")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    data = None
    if args.config:
        from ssm_perception.train.config import TrainConfig

        try:
            train_cfg = TrainConfig.from_yaml(args.config)
        except Exception as exc:  # noqa: BLE001 - one-line user error
            print(f"error: {args.config}: {exc}", file=sys.stderr)
            return 2
        data = train_cfg.data
    args.presets = args.presets or (list(data.presets) if data else ["randomised"])
    args.duration = args.duration if args.duration is not None else (data.duration_s if data else 30.0)
    args.seed_start = args.seed_start if args.seed_start is not None else (data.train_seeds.start if data else 0)
    args.cache_dir = args.cache_dir or ((data.cache_dir or "out/train_cache") if data else "out/train_cache")
    if args.hours <= 0 or args.jobs < 1 or args.duration <= 0 or args.seed_start < 0:
        print("error: --hours and --duration must be > 0, --jobs >= 1, --seed-start >= 0", file=sys.stderr)
        return 2

    from ssm_perception.config import PerceptionConfig
    from ssm_perception.sim.presets import PRESETS, RANDOMISED
    from ssm_perception.train.dataset import cache_path, make_specs

    unknown = [p for p in args.presets if p not in PRESETS and p not in RANDOMISED]
    if unknown:
        print(f"error: unknown preset(s) {unknown}; available: {', '.join([*sorted(PRESETS), *RANDOMISED])}",
              file=sys.stderr)
        return 2
    cfg = train_cfg.perception if args.config else PerceptionConfig()
    n = math.ceil(args.hours * 3600.0 / args.duration - 1e-9)
    if data is not None and data.train_seeds.count != n:
        print(f"note: {args.config} trains on {data.train_seeds.count} sequences; --hours {args.hours:g} makes {n} "
              "(set data.train_seeds.count to use them all)", flush=True)
    specs = make_specs(args.presets, range(args.seed_start, args.seed_start + n), args.duration)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stale = _clean_stale(cache)
    todo = [s for s in specs if not (cache_path(cache, s, cfg) / "spec.json").is_file()]
    print(f"{n} sequences of {args.duration:g} s ({n * args.duration / 3600:.2f} h) in {cache}: "
          f"{n - len(todo)} already done, {len(todo)} to generate on {args.jobs} processes"
          + (f" (removed {stale} stale partial entries)" if stale else ""), flush=True)
    t0 = time.perf_counter()
    cpu_here = 0.0
    if todo:
        from tqdm import tqdm

        jobs = [(s, cfg.model_dump_json(), str(cache), not args.no_compress) for s in todo]
        bar = tqdm(total=len(jobs), unit="seq", desc="generate", disable=args.no_progress, dynamic_ncols=True)
        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            for _path, cpu, _wall in pool.imap_unordered(_job, jobs):
                cpu_here += cpu
                bar.update(1)
                bar.set_postfix(sim_s_per_cpu_s=f"{bar.n * args.duration / max(cpu_here, 1e-9):.2f}")
        bar.close()
    wall = time.perf_counter() - t0
    paths = [cache_path(cache, s, cfg) for s in specs]
    summary = summarise(paths, {
        "hours_requested": args.hours, "presets_requested": args.presets, "duration_s": args.duration,
        "seeds": [args.seed_start, args.seed_start + n - 1], "jobs": args.jobs, "cpu_count": os.cpu_count(),
        "this_run": {"generated": len(todo), "wall_s": round(wall, 1), "cpu_s": round(cpu_here, 1)},
        "cache_dir": str(cache), "cache_key_example": paths[0].name,
    })
    out = Path(args.summary) if args.summary else cache / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("sequences", "hours", "disk_gb", "sensor_models", "objects_per_class",
                                              "sim_s_per_cpu_s")}))
    print(f"wrote {out}\ntraining config:\n  data:\n    presets: {args.presets}\n"
          f"    train_seeds: {{start: {args.seed_start}, count: {n}}}\n    duration_s: {args.duration:g}\n"
          f"    cache_dir: {cache}\n    compress_cache: {str(not args.no_compress).lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pay a GPU process's one-time costs before the node subscribes to its sensors.

The first frame on a CUDA device compiles the Triton kernels, creates the cuBLAS/cuDNN handles and
grows the caching allocator; at 10 Hz every second of that is ten LiDAR scans the node skips while
busy. ``warm_up`` runs a few simulated frames through a scratch ``PerceptionPipeline`` that shares
the node's model (read only, in eval mode) and is then dropped: the process-wide caches stay warm,
while the node's own pipeline (temporal state, reset policy, tracker, the LiDAR intensity scale it
learns from the first scans, its CUDA graphs) is untouched, so its outputs are the same as without
the warm-up (test/test_warmup.py). Its CUDA graphs are still captured on its first frame, which
then costs the capture only.
"""

from __future__ import annotations

import time

WARMUP_FRAMES = 3


def warm_up(config, model, frames: int = WARMUP_FRAMES) -> dict:
    """Run ``frames`` simulated frames (the 'urban' preset) through a scratch pipeline on ``model``.

    Returns ``{"frames": n, "seconds": s}``. Nothing of the scratch pipeline survives the call.
    """
    import torch

    from ssm_perception.config import GridConfig
    from ssm_perception.pipeline import PerceptionPipeline, sim_inputs
    from ssm_perception.sim.scenario import Scenario

    t0 = time.monotonic()
    cfg = config.model_copy(deep=True)
    # The scenario's grid only shapes its ground-truth rasters (unused here): a small one is cheap.
    sc = Scenario.from_preset("urban", seed=0, duration_s=0.1 * (frames + 4),
                              grid=GridConfig(length_x=16.0, length_y=16.0))
    scratch = PerceptionPipeline(cfg, model=model)
    n = 0
    with torch.no_grad():
        for inp in sim_inputs(sc, cfg):
            scratch.process(inp)
            n += 1
            if n >= frames:
                break
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    del scratch
    return {"frames": n, "seconds": time.monotonic() - t0}

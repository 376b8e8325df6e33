"""The node's GPU warm-up (ssm_perception/warmup.py) runs frames through a scratch pipeline only:
the model it shares is not changed and a pipeline built after it gives the same outputs as one
built before it."""

import numpy as np
import torch

from ssm_perception.config import GridConfig, PerceptionConfig
from ssm_perception.model import BevPerceptionModel
from ssm_perception.pipeline import PerceptionPipeline, sim_inputs
from ssm_perception.sim.scenario import Scenario
from ssm_perception.warmup import warm_up


def test_warm_up_changes_neither_the_model_nor_the_outputs():
    cfg = PerceptionConfig(grid=GridConfig(length_x=16.0, length_y=16.0),
                           model={"kind": "mamba", "backend": "reference", "device": "cpu"})
    torch.manual_seed(0)
    model = BevPerceptionModel(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sc = Scenario.from_preset("urban", seed=3, duration_s=0.35, grid=cfg.grid)
    frames = list(sim_inputs(sc, cfg))[:3]
    first = PerceptionPipeline(cfg, model=model)
    ref = [first.process(f) for f in frames]

    info = warm_up(cfg, model, frames=1)

    assert info["frames"] == 1 and info["seconds"] > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    second = PerceptionPipeline(cfg, model=model)
    outs = [second.process(f) for f in frames]
    for a, b in zip(ref, outs, strict=True):
        assert np.array_equal(a.occupancy, b.occupancy) and np.array_equal(a.dynamic, b.dynamic)
        assert a.reset.reasons == b.reset.reasons
    assert second.reset_counts == first.reset_counts

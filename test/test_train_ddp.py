"""DistributedDataParallel smoke: torchrun with 2 CPU processes (gloo), a tiny config, a few steps.

The test re-runs this file under torchrun; as a script it trains on the synthetic sequences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def test_ddp_two_processes_gloo(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{HERE.parent}{os.pathsep}{HERE}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__)), str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "run" / "trainer_state_r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "run" / "trainer_state_r1.pt", weights_only=True)
    assert r0["step"] == r1["step"] == 3
    # DDP averaged the gradients: both ranks hold the same weights although they saw different data
    for k in r0["model"]:
        torch.testing.assert_close(r0["model"][k], r1["model"][k], rtol=0, atol=1e-6, msg=k)
    assert r0["sampler"]["rng"] != r1["sampler"]["rng"]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "metrics.json").is_file()


if __name__ == "__main__":
    import test_train_fakes as fk

    import ssm_perception.train.dataset as ds
    from ssm_perception.train.config import TrainConfig
    from ssm_perception.train.trainer import Trainer

    ds.generate_sequence = fk.synthetic_sequence
    out = Path(sys.argv[1])
    cfg = TrainConfig.model_validate({
        "perception": {"grid": fk.GRID, "model": {"kind": "attention", "d_model": 8}},
        "data": {"presets": ["urban"], "train_seeds": {"start": 0, "count": 2}, "val_seeds": {"start": 9, "count": 1},
                 "duration_s": 1.0, "val_duration_s": 0.5, "cache_dir": ""},
        "optim": {"batch_size": 1, "tbptt": 3, "amp": False},
        "run": {"max_steps": 3, "checkpoint_every": 2, "log_every": 1, "device": "cpu"},
    })
    Trainer(cfg, out / "run", progress=False).train()

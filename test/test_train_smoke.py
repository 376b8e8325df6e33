"""End to end on the real simulator: `ssm-perception train` with config/train_smoke.yaml, the log-odds
filter validated on the same held-out seeds, and scripts/model_card.py shipping both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_training_and_model_card(tmp_path):
    from ssm_perception.cli import app

    runner = CliRunner()
    cache = tmp_path / "cache"
    args = ["train", "-c", str(ROOT / "config/train_smoke.yaml"), "--cache-dir", str(cache)]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "mamba")])
    assert res.exit_code == 0, res.output
    assert "held-out IoU" in res.output
    m = json.loads((tmp_path / "mamba" / "metrics.json").read_text())
    assert m["meta"]["steps"] == 4 and m["meta"]["val_seeds"] == [100000]
    assert set(m["meta"]["train_seeds"]).isdisjoint(m["meta"]["val_seeds"])
    assert m["val"]["frames"] > 0 and 0.0 <= m["val"]["ece"] <= 1.0
    log = [json.loads(x) for x in (tmp_path / "mamba" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)
    assert len(list(cache.iterdir())) == 3  # 2 training + 1 validation sequence, cached

    res = runner.invoke(app, [*args, "-o", str(tmp_path / "logodds"), "--kind", "logodds"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "logodds" / "model.safetensors").exists()

    ckpts = tmp_path / "ckpts"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/model_card.py"), "--checkpoints", str(ckpts),
                           "--import", str(tmp_path / "mamba"), str(tmp_path / "logodds")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in ckpts.iterdir()} == {"mamba.safetensors", "mamba.safetensors.json", "MANIFEST.json",
                                                "mamba_metrics.json", "logodds_metrics.json", "MODEL_CARD.md"}
    card = (ckpts / "MODEL_CARD.md").read_text()
    assert "| mamba |" in card and "| logodds |" in card and "ECE <= 0.05" in card

    from ssm_perception.model import load_checkpoint

    model, meta = load_checkpoint(ckpts / "mamba.safetensors", allow_untrusted=True)  # not the package's
    assert meta["steps"] == 4 and model.kind == "mamba"

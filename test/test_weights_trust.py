"""Weights are trusted against digests pinned in the package (checkpoints/MANIFEST.json), not only
the sidecar beside the file; user-trained weights need an explicit option and log a warning."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ssm_perception.weights as W
from ssm_perception.cli import app
from ssm_perception.config import PerceptionConfig
from ssm_perception.weights import (
    CheckpointError,
    check_model_weights,
    file_sha256,
    verify_checkpoint,
)

runner = CliRunner()
SHIPPED = Path(W.__file__).resolve().parent / "checkpoints"


def test_manifest_pins_every_shipped_checkpoint_and_sidecar():
    pinned = W.read_manifest()
    files = sorted(p.name for p in SHIPPED.glob("*.safetensors"))
    assert files and sorted(pinned) == files
    for name, entry in pinned.items():
        assert entry["sha256"] == file_sha256(SHIPPED / name)
        assert entry["sidecar_sha256"] == file_sha256(SHIPPED / (name + ".json"))
    for kind in ("mamba", "single", "convgru", "attention"):
        cfg = PerceptionConfig(model={"kind": kind})
        check_model_weights(cfg)  # trusted without any option


@pytest.fixture
def fake_install(tmp_path, monkeypatch):
    """A copy of the package's checkpoints/ (with its manifest) standing in for the installed one."""
    d = tmp_path / "pkg_checkpoints"
    d.mkdir()
    for f in ["mamba.safetensors", "mamba.safetensors.json", W.MANIFEST_NAME]:
        shutil.copy(SHIPPED / f, d / f)
    monkeypatch.setattr(W, "SHIPPED_CHECKPOINTS", d)
    return d


def _tamper_both(weights: Path) -> None:
    """Edit the weights and write their new digest into the sidecar: the sidecar check alone passes."""
    raw = bytearray(weights.read_bytes())
    raw[-8] ^= 0x01  # a bit of the last tensor's data
    weights.write_bytes(bytes(raw))
    side = weights.with_name(weights.name + ".json")
    info = json.loads(side.read_text())
    info["sha256"] = file_sha256(weights)
    side.write_text(json.dumps(info))


def test_editing_weights_and_sidecar_of_shipped_weights_is_refused(fake_install):
    w = fake_install / "mamba.safetensors"
    verify_checkpoint(w)  # intact: trusted
    _tamper_both(w)
    for allow in (False, True):  # a modified installation is refused even when untrusted weights are allowed
        with pytest.raises(CheckpointError, match="manifest pins"):
            verify_checkpoint(w, allow_untrusted=allow)
    from ssm_perception.model import load_checkpoint

    with pytest.raises(CheckpointError, match="manifest pins"):
        load_checkpoint(w, allow_untrusted=True)


def test_sidecar_edit_alone_is_refused(fake_install):
    side = fake_install / "mamba.safetensors.json"
    info = json.loads(side.read_text())
    info["metadata"]["note"] = "edited"
    side.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="sidecar"):
        verify_checkpoint(fake_install / "mamba.safetensors")


def test_missing_manifest_refuses_shipped_weights(fake_install):
    (fake_install / W.MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        verify_checkpoint(fake_install / "mamba.safetensors")


def test_a_copy_of_shipped_weights_elsewhere_stays_trusted(tmp_path, caplog):
    for f in ("mamba.safetensors", "mamba.safetensors.json"):
        shutil.copy(SHIPPED / f, tmp_path / f)
    with caplog.at_level(logging.WARNING):
        _, _, trusted = verify_checkpoint(tmp_path / "mamba.safetensors")
    assert trusted and not caplog.records


@pytest.fixture
def user_weights(tmp_path):
    from ssm_perception.model import BevPerceptionModel, save_checkpoint

    cfg = PerceptionConfig(model={"kind": "single", "d_model": 8})
    path = tmp_path / "mine.safetensors"
    save_checkpoint(BevPerceptionModel(cfg), path, {"note": "user-trained"})
    return path


def test_user_weights_need_the_option_and_log_a_warning(user_weights, caplog):
    from ssm_perception.pipeline import resolve_model

    cfg = PerceptionConfig(model={"kind": "single", "d_model": 8, "checkpoint": str(user_weights)})
    with pytest.raises(CheckpointError, match="allow_untrusted_weights"):
        resolve_model(cfg)
    cfg.model.allow_untrusted_weights = True
    with caplog.at_level(logging.WARNING, logger="ssm_perception.weights"):
        model, info = resolve_model(cfg)
    assert model.kind == "single" and info["source"] == str(user_weights)
    assert any("untrusted weights" in r.getMessage() for r in caplog.records)


def test_model_fields_that_differ_from_the_checkpoint_are_errors(user_weights):
    from ssm_perception.pipeline import resolve_model

    cfg = PerceptionConfig(model={"kind": "single", "d_model": 16, "checkpoint": str(user_weights),
                                  "allow_untrusted_weights": True})
    with pytest.raises(CheckpointError, match=r"model\.d_model.*16.*8"):
        resolve_model(cfg)


def test_config_and_evaluate_refuse_untrusted_weights_in_one_line(user_weights, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"model:\n  kind: single\n  d_model: 8\n  checkpoint: {user_weights}\n")
    res = runner.invoke(app, ["config", str(cfg_file)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "allow_untrusted_weights" in res.stderr
    cfg_file.write_text(cfg_file.read_text() + "  allow_untrusted_weights: true\n")
    assert runner.invoke(app, ["config", str(cfg_file)]).exit_code == 0
    # evaluate: the load error is one line, before any bag is read (tmp_path is no bag)
    args = ["evaluate", str(tmp_path), "--model", str(user_weights), "-o", str(tmp_path / "o")]
    cfg_file.write_text(f"model:\n  kind: single\n  d_model: 8\n  checkpoint: {user_weights}\n")
    res = runner.invoke(app, [*args, "-c", str(cfg_file)])
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "allow_untrusted_weights" in res.stderr
    assert "Traceback" not in res.output
    # with the flag the weights pass and evaluate goes on to the bag (which is none: one line again)
    res = runner.invoke(app, [*args, "-c", str(cfg_file), "--allow-untrusted-weights"])
    assert res.exit_code == 2 and "metadata.yaml" in res.stderr and "untrusted" not in res.stderr, res.output


def test_node_startup_load_error_is_one_line(tmp_path, capsys):
    from ssm_perception.nodes import perception_node

    params = tmp_path / "p.yaml"
    params.write_text(PerceptionConfig(model={"kind": "single", "checkpoint": str(tmp_path / "gone.safetensors")})
                      .to_yaml())
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # main() installs its own SIGINT/SIGTERM handlers: give pytest its own back afterwards
        code = perception_node.main(["perception_node", "--ros-args", "--params-file", str(params)])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "cannot load the model" in ln]
    assert len(errors) == 1 and "not found" in errors[0]

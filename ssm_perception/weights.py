"""Which weights may run, checked without torch: sidecar, digests, the package's pinned manifest.

A checkpoint is ``<file>.safetensors`` + a JSON sidecar ``<file>.safetensors.json`` (config, kind,
sha256 of the weights; see model.save_checkpoint). The sidecar's sha256 only catches accidents: whoever
edits the weights can edit the sidecar too. Trust therefore comes from ``checkpoints/MANIFEST.json``,
shipped in the package, which pins the sha256 of every shipped weights file *and* of its sidecar:

- a checkpoint whose two digests are pinned is trusted wherever it lies (a copy of a shipped one);
- a file inside the package's checkpoints/ directory that does not match its pin is refused always
  (a modified installation);
- anything else (your own training runs) loads only with ``model.allow_untrusted_weights: true``
  (``--allow-untrusted-weights`` on the CLI), with a warning.

``write_manifest`` regenerates the manifest (scripts/model_card.py calls it when shipping weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ssm_perception.config import UserError

if TYPE_CHECKING:
    from ssm_perception.config import GridConfig, ModelConfig, PerceptionConfig

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "ssm_perception.checkpoint/1"
MANIFEST_FORMAT = "ssm_perception.manifest/1"
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
UNTRUSTED_HINT = "set model.allow_untrusted_weights: true (CLI: --allow-untrusted-weights) to run your own weights"
# Model fields that shape the weights, per kind; the runtime ones (device, backend, threads, ...) may differ.
ARCHITECTURE_FIELDS = {
    "mamba": ("d_model", "d_state", "headdim", "expand", "neck"),
    "single": ("d_model", "neck"),
    "convgru": ("d_model", "neck"),
    "attention": ("d_model", "attention_history", "neck"),
    "logodds": (),
}


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message says why."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (checkpoints, model card, manifest)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


# ---------------------------------------------------------------------------------- manifest
def manifest_path(directory: Path | None = None) -> Path:
    return Path(directory or SHIPPED_CHECKPOINTS) / MANIFEST_NAME


def write_manifest(directory: Path | None = None) -> Path:
    """Pin every ``*.safetensors`` (and its sidecar) of ``directory`` (default: the package's) in its MANIFEST.json."""
    directory = Path(directory or SHIPPED_CHECKPOINTS)
    files = {}
    for weights in sorted(directory.glob("*.safetensors")):
        side = sidecar_path(weights)
        if not side.is_file():
            raise CheckpointError(f"{weights}: no sidecar {side.name}; not pinning a checkpoint without one")
        info = _read_sidecar(side)
        digest = file_sha256(weights)
        if digest != info.get("sha256"):
            raise CheckpointError(f"{weights}: sha256 {digest} does not match its sidecar; not pinning it")
        files[weights.name] = {"kind": info.get("kind"), "sha256": digest, "sidecar_sha256": file_sha256(side)}
    path = manifest_path(directory)
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: Path | None = None) -> dict[str, dict]:
    """{file name: {kind, sha256, sidecar_sha256}}; {} when there is none."""
    path = manifest_path(directory)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable weights manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), dict):
        raise CheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return data["files"]


def _is_shipped_location(path: Path) -> bool:
    try:
        return path.resolve().parent == SHIPPED_CHECKPOINTS.resolve()
    except OSError:
        return False


def check_trust(path: Path, digest: str, sidecar_digest: str, allow_untrusted: bool) -> bool:
    """True if pinned by the manifest; False if untrusted but allowed (warning logged); else raises."""
    pinned = read_manifest()
    if any(e.get("sha256") == digest and e.get("sidecar_sha256") == sidecar_digest for e in pinned.values()):
        return True
    if _is_shipped_location(path):
        entry = pinned.get(path.name)
        if entry is None:
            why = f"is not listed in {manifest_path()}" if pinned else f"cannot be verified: {manifest_path()} is missing"
        elif entry.get("sha256") != digest:
            why = f"has sha256 {digest}, the manifest pins {entry.get('sha256')}"
        else:
            why = f"has a sidecar with sha256 {sidecar_digest}, the manifest pins {entry.get('sidecar_sha256')}"
        raise CheckpointError(f"{path}: shipped checkpoint {why}; the installation was modified (reinstall it)")
    if not allow_untrusted:
        raise CheckpointError(f"{path}: weights not pinned in the package's {MANIFEST_NAME} (sha256 {digest[:16]}...); "
                              f"{UNTRUSTED_HINT}")
    log.warning("loading untrusted weights %s (sha256 %s): not pinned in the package's %s (allow_untrusted_weights)",
                path, digest, MANIFEST_NAME)
    return False


# ---------------------------------------------------------------------------------- sidecar checks
def _read_sidecar(side: Path) -> dict:
    try:
        info = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{side}: not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{side}: not a checkpoint sidecar (top level is not an object)")
    if info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{side}: unknown format {info.get('format')!r} (expected {CHECKPOINT_FORMAT})")
    return info


def verify_checkpoint(path: str | Path, *, allow_untrusted: bool = False, expected_sha256: str | None = None,
                      expected_kind: str | None = None, expected_model: ModelConfig | None = None,
                      grid: GridConfig | None = None) -> tuple[dict, PerceptionConfig, bool]:
    """Every check of a checkpoint that needs no torch. Returns (sidecar dict, its config, trusted).

    ``expected_model``: the configured model section; an architecture field (ARCHITECTURE_FIELDS)
    that differs from the checkpoint's is an error naming it. ``grid``: the configured grid (its
    resolution must be the trained one). Raises CheckpointError."""
    from pydantic import ValidationError

    from ssm_perception.config import PerceptionConfig, describe_validation_error

    path = Path(path)
    if not path.is_file():  # before the sidecar's name: a directory such as '/' has none
        raise CheckpointError(f"checkpoint not found: {path}" + (" (a directory, not a .safetensors file)"
                                                                 if path.is_dir() else ""))
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(f"checkpoint sidecar not found: {side}")
    info = _read_sidecar(side)
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if digest != info.get("sha256"):
        raise CheckpointError(f"{path}: sha256 {digest} does not match its sidecar ({info.get('sha256')})")
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise CheckpointError(f"{path}: sha256 {digest} != expected {expected_sha256}")
    trusted = check_trust(path, digest, file_sha256(side), allow_untrusted)
    kind = info.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{path}: checkpoint is kind {kind!r}, expected {expected_kind!r} (model.kind)")
    try:
        config = PerceptionConfig.model_validate(info.get("config"))
    except ValidationError as exc:
        raise CheckpointError(f"{side}: invalid config: {describe_validation_error(exc)}") from None
    if config.model.kind != kind:
        raise CheckpointError(f"{side}: config says kind {config.model.kind!r} but the checkpoint is {kind!r}")
    if expected_model is not None:
        for name in ARCHITECTURE_FIELDS.get(kind, ()):
            mine, theirs = getattr(expected_model, name), getattr(config.model, name)
            if mine != theirs:
                raise CheckpointError(f"model.{name}: the configuration says {mine!r} but {path.name} was trained with "
                                      f"{theirs!r}; set model.{name}: {theirs!r} or use other weights")
    if grid is not None and abs(grid.resolution - config.grid.resolution) > 1e-9:
        raise CheckpointError(f"grid.resolution: {path.name} was trained at {config.grid.resolution} m, the "
                              f"configuration asks for {grid.resolution} m (set model.kind=logodds or retrain)")
    return info, config, trusted


# ---------------------------------------------------------------------------------- what a config runs
def shipped_checkpoint(kind: str, directory: Path | None = None) -> Path | None:
    """The checkpoint of ``kind`` shipped in ``directory`` (default: the package's; ``<kind>.safetensors``
    first, else any whose sidecar says that kind), or None."""
    directory = Path(directory or SHIPPED_CHECKPOINTS)
    if not directory.is_dir():
        return None
    preferred = directory / f"{kind}.safetensors"
    candidates = [preferred] if preferred.is_file() else sorted(directory.glob("*.safetensors"))
    for path in candidates:
        try:
            if json.loads(sidecar_path(path).read_text()).get("kind") == kind:
                return path
        except (OSError, ValueError):
            continue
    return None


def configured_weights(cfg: PerceptionConfig) -> Path | None:
    """The weights file the pipeline would load for ``cfg`` (None: training-free or fallback)."""
    m = cfg.model
    if m.checkpoint:
        return Path(m.checkpoint)
    if m.kind == "logodds":
        return None
    return shipped_checkpoint(m.kind)


def check_model_weights(cfg: PerceptionConfig) -> None:
    """Refuse what the node would refuse when loading its weights (without loading them)."""
    path = configured_weights(cfg)
    if path is not None:
        verify_checkpoint(path, allow_untrusted=cfg.model.allow_untrusted_weights, expected_kind=cfg.model.kind,
                          expected_model=cfg.model, grid=cfg.grid)

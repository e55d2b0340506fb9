"""Checkpoints: safetensors weights plus a JSON config. Loading never executes code from a file.

``NAME.safetensors`` holds the weights; ``NAME.json`` holds what is needed to rebuild and to trust
them: model type and hyper-parameters, dims, ctx, the encoder fingerprint and dataset content hash
it was trained on, the training config, and a SHA-256 of the weights file. Legacy pickled ``.pt``
files are only read with ``torch.load(weights_only=True)``, which refuses arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lvm.errors import LvmError
from lvm.io import sha256_file, write_atomic, write_json_atomic
from lvm.models import MODEL_TYPES, build_model
from lvm.models.baselines import BASELINES

CHECKPOINT_FORMAT = "lvm-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "version",
    "model_type",
    "model_config",
    "input_dim",
    "ctx",
    "encoder_fingerprint",
    "dataset_hash",
)


def model_types() -> list[str]:
    return [*MODEL_TYPES, *BASELINES]


def make_model(model_type: str, config: dict) -> nn.Module:
    """A trainable architecture or a null baseline, by type name."""
    if model_type in BASELINES:
        cls = BASELINES[model_type]
        try:
            return cls(input_dim=int(config["input_dim"]), ctx=int(config["ctx"]))
        except (KeyError, TypeError, ValueError):
            raise LvmError(f"{model_type} config needs input_dim and ctx") from None
    with torch.device("meta"):  # sized first, without memory: a config asking for billions is refused
        shell = build_model(model_type, config)
    n = sum(p.numel() for p in shell.parameters()) + sum(b.numel() for b in shell.buffers())
    if n > MAX_PARAMS:
        raise LvmError(f"{model_type} config asks for {n:,} parameters (more than {MAX_PARAMS:,}); refused")
    return build_model(model_type, config)


def save_checkpoint(stem: Path, model: nn.Module, meta: dict) -> dict:
    """Write ``stem.safetensors`` and ``stem.json`` atomically; returns the JSON written."""
    from safetensors.torch import save_file

    stem = Path(stem)
    weights = stem.with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(weights, lambda tmp: save_file(state, str(tmp)))
    full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta, "weights_sha256": sha256_file(weights)}
    write_json_atomic(stem.with_suffix(".json"), full)
    return full


PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")  # torch.save / pickle files: never unpickled here


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint; a file may be given as .json or .safetensors. A pickled
    file (or a folder that holds only one, the seeds' run folder) is returned as is, to be refused."""
    p = Path(path)
    if p.is_dir():
        pickled = sorted(f for f in p.glob("*") if f.suffix in PICKLED_SUFFIXES and f.is_file())
        p = p / "best.json"
        if not p.is_file() and pickled:
            return next((f for f in pickled if f.name == "best_model.pt"), pickled[0])
    elif p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if p.suffix in PICKLED_SUFFIXES:
        return p
    if not p.is_file():
        raise LvmError(f"checkpoint {path} not found (expected a run folder, NAME.json or NAME.safetensors)")
    return p


def read_checkpoint_meta(path: str | Path) -> dict:
    """The checkpoint's JSON, checked against ``lvm.schemas.CheckpointMeta`` (types, ranges, sizes)."""
    from lvm import schemas

    p = resolve_checkpoint(path)
    meta = schemas.read_json(p, "an lvm checkpoint config")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise LvmError(f"{p}: not an lvm checkpoint config")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise LvmError(f"{p}: checkpoint metadata incomplete, missing {', '.join(missing)}")
    if meta["version"] != CHECKPOINT_VERSION:
        raise LvmError(f"{p}: checkpoint version {meta['version']}, this lvm reads {CHECKPOINT_VERSION}")
    schemas.validate(schemas.CheckpointMeta, meta, str(p))
    if meta["model_type"] not in model_types():
        raise LvmError(f"{p}: unknown model type {meta['model_type']!r}; known: {', '.join(model_types())}")
    meta["_path"] = str(p)
    return meta


MAX_PARAMS = 500_000_000  # an LVM is a few million parameters; a config asking for more is refused before allocating


def make_checked_model(model_type: str, config: dict, where: str) -> nn.Module:
    """``make_model``, sized first on the meta device (no memory) and refused when implausibly large."""
    with torch.device("meta"):
        shell = make_model(model_type, config)
    n = sum(p.numel() for p in shell.parameters()) + sum(b.numel() for b in shell.buffers())
    if n > MAX_PARAMS:
        raise LvmError(
            f"{where}: the config asks for {n:,} parameters (more than {MAX_PARAMS:,}); refused before allocating"
        )
    return make_model(model_type, config)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from ``NAME.json`` and load ``NAME.safetensors`` into it (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = resolve_checkpoint(path)
    if p.suffix in PICKLED_SUFFIXES:
        raise LvmError(
            f"{p}: pickled checkpoints are not loaded (they can execute code): run `lvm import-checkpoint {p} "
            "--factory py:models.py:YourClass --out DIR --dataset DATA` once and gate DIR"
        )
    meta = read_checkpoint_meta(p)
    weights = p.with_suffix(".safetensors")
    if not weights.is_file():
        raise LvmError(f"{weights} missing (the checkpoint's weights file)")
    if meta.get("weights_sha256") and sha256_file(weights) != meta["weights_sha256"]:
        raise LvmError(f"{weights}: weights do not match the SHA-256 in {p.name} (corrupt or replaced)")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LvmError(f"{weights}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    from lvm.schemas import check_weights

    check_weights(weights, state)
    model = make_checked_model(meta["model_type"], meta["model_config"], str(p))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LvmError(
            f"{weights}: weights do not fit a {meta['model_type']} with this config ({str(exc).splitlines()[0]})"
        ) from None
    model.eval()
    return model, meta


def load_legacy_state_dict(path: str | Path) -> dict:
    """Read a pickled ``.pt`` state dict with ``weights_only=True``: tensors and plain data only."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about odd pickles it then refuses: the refusal says it
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways; weights_only ran none of it
        raise LvmError(
            f"{path}: refused to load (not plain tensors; loading it could execute code): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LvmError(f"{path}: no state dict of tensors inside")
    return obj


def check_compatible(meta: dict, dataset) -> None:
    """Refuse a checkpoint whose encoder fingerprint or dims do not match the dataset."""
    name = Path(meta.get("_path", "checkpoint")).name
    if int(meta["input_dim"]) != dataset.dim:
        raise LvmError(f"{name}: model input dim {meta['input_dim']} but dataset {dataset.path} has dim {dataset.dim}")
    ds_fp = dataset.encoder_fingerprint
    if meta["encoder_fingerprint"] != ds_fp:
        raise LvmError(
            f"{name}: encoder fingerprint {str(meta['encoder_fingerprint'])[:12]}… differs from dataset "
            f"{dataset.path}'s {str(ds_fp)[:12]}… (different vector space: re-encode or retrain)"
        )

"""The seeds' trainer checkpoints (``best_model.pt``: a pickled dict holding ``model_type``,
``model_state_dict``, ``model_config``, ``epoch``, ``args``, ...) -> safetensors + a JSON model card
+ a ``torch.export`` program. The file is read with ``torch.load(weights_only=True)``: tensors and
plain data only, plus an allow-list of the harmless types their ``args`` may hold; anything else
(a ``__reduce__`` payload, an unknown class) is refused before any of it runs. The user's class (or
factory), named by ``--factory py:...``, is built from the file's ``model_config`` (its constructor's
keyword arguments, updated with ``--model-args``) and loaded strictly; it is called by its signature
(``lvm.models.adapters.adapt``): the seeds' ``forward(x, return_raw=False)`` gets no mask and is gated
on full windows. A model ``torch.export`` cannot trace is imported without ``model.pt2`` (one line
says so) and gated eagerly through its factory.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import warnings
from pathlib import Path

import torch

from lvm.errors import LvmError
from lvm.io import atomic_dir, refuse_foreign_folder, sha256_file, write_atomic, write_json_atomic
from lvm.models.adapters import (
    ExportUntraceable,
    LoadedModel,
    ModelCard,
    _import_factory,
    adapt,
    apply_adapter_fields,
    call_factory,
    count_params,
    export_model,
)

CARD_FILE = "model.json"
# what the seeds' `args` may hold besides str/int/float/bool/None/list/dict: rebuilt by their constructors, no code
SAFE_ARG_TYPES = (argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath)
CTX_KEYS = ("ctx", "context_length", "context_len", "context_size", "seq_len")
DIM_KEYS = ("input_dim", "d_model", "dim", "embedding_dim")


def read_seed_checkpoint(path: str | Path) -> dict:
    """The pickled dict, loaded with ``weights_only=True``; one line when it is refused."""
    p = Path(path)
    if not p.is_file():
        raise LvmError(f"{p} not found")
    try:
        with torch.serialization.safe_globals(list(SAFE_ARG_TYPES)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about odd pickles it then refuses: the refusal says it
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways; weights_only ran none of it
        why = _why(exc)
        raise LvmError(f"{p}: refused (not plain tensors and data; loading it could execute code): {why}") from None
    if (
        isinstance(obj, dict)
        and "model_state_dict" not in obj
        and obj
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        obj = {"model_state_dict": obj}  # a bare state dict
    if not isinstance(obj, dict) or not isinstance(obj.get("model_state_dict"), dict):
        raise LvmError(f"{p}: no model_state_dict inside (expected the seeds' checkpoint dict or a bare state dict)")
    return obj


def _why(exc: Exception) -> str:
    """The line of torch's refusal that names what was refused (its first line is a generic notice)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    named = [ln for ln in lines if "GLOBAL" in ln]  # "Unsupported global: GLOBAL x.y ..." / "unsupported GLOBAL x.y"
    # torch goes on to suggest allow-listing the global: never the advice for a file that tries to run code
    return (named or lines or [type(exc).__name__])[0].split(" Please use")[0][:200]


def _first(sources: list[dict], keys: tuple[str, ...]):
    for src in sources:
        for k in keys:
            if isinstance(src.get(k), int) and not isinstance(src.get(k), bool):
                return src[k]
    return None


def load_strict(model: torch.nn.Module, state: dict, where: str) -> None:
    """``load_state_dict(strict=True)``, with the missing and unexpected keys named on a mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches: {', '.join(shapes[:4])}")
        raise LvmError(f"{where}: the state dict does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _plain(obj):
    """JSON-safe copy of the seeds' args (Namespace and paths become dicts and strings)."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _build_and_load(factory: str, config: dict, state: dict, pt_path) -> tuple[torch.nn.Module, Path | None]:
    """The user's class (or factory) built with the constructor arguments ``config``, the state dict
    loaded strictly (eval mode)."""
    fn, source = _import_factory(factory)
    model, _ = call_factory(fn, factory, config)
    if not isinstance(model, torch.nn.Module):
        raise LvmError(
            f"{factory}: returned {type(model).__name__}, not a torch.nn.Module (weights cannot be loaded into it)"
        )
    load_strict(model, state, str(pt_path))
    return model.eval(), source


def import_checkpoint(
    pt_path: str | Path,
    factory: str,
    out: str | Path,
    *,
    encoder_fingerprint: str | None = None,
    ctx: int | None = None,
    min_ctx: int | None = None,
    input_dim: int | None = None,
    name: str | None = None,
    accepts_mask: bool = True,
    export: bool = True,
    model_args: dict | None = None,
    log=None,
) -> dict:
    """Convert a seeds' checkpoint into ``out/model.safetensors``, ``out/model.json`` (card) and
    ``out/model.pt2``; returns the card. Nothing from the ``.pt`` file runs; the factory's code does.

    ``model_args`` update the file's ``model_config`` (the card records the result). When torch.export
    cannot trace the model, no ``model.pt2`` is written, the card's ``torch_export`` says why and
    ``log`` (default: stderr) gets one line."""
    from safetensors.torch import save_file

    out = Path(out)
    refuse_foreign_folder(out, what="imported checkpoint")  # before any work: atomic_dir checks again
    obj = read_seed_checkpoint(pt_path)
    config = obj.get("model_config") or {}
    if not isinstance(config, dict):
        raise LvmError(f"{pt_path}: model_config must be a dict of constructor arguments; got {type(config).__name__}")
    args = _plain(obj.get("args") or {})
    config = {**config, **(model_args or {})}
    model, source = _build_and_load(factory, config, obj["model_state_dict"], pt_path)
    sources = [config, args if isinstance(args, dict) else {}]
    card = ModelCard(
        name=name or Path(pt_path).parent.name or Path(pt_path).stem,
        type=str(obj.get("model_type") or type(model).__name__),
        ctx=ctx or _first(sources, CTX_KEYS) or 0,
        min_ctx=min_ctx or 1,
        input_dim=input_dim or _first(sources, DIM_KEYS) or 0,
        encoder_fingerprint=encoder_fingerprint,
        n_params=count_params(model),
        accepts_mask=accepts_mask,
        kind="python",
        source=str(Path(pt_path).resolve()),
        source_sha256=sha256_file(pt_path),
        model_config=_plain(config),
        training=args or None,
        epoch=obj.get("epoch") if isinstance(obj.get("epoch"), int) else None,
    )
    if card.ctx == 0 or card.input_dim == 0:
        raise LvmError(f"{pt_path}: ctx / input_dim not found in model_config or args; pass --ctx and --input-dim")
    card.validate(str(pt_path))
    predictor, fields = adapt(model, card.ctx, card.input_dim)
    apply_adapter_fields(card, fields)
    if not card.accepts_mask and min_ctx is None:
        card.min_ctx = card.ctx  # full windows: what it is gated on
    data = {
        **card.to_dict(),
        "format": "lvm-model-card",
        "factory": factory,
        "weights": "model.safetensors",
        "factory_source_sha256": sha256_file(source) if source else None,
        "imported_from": card.source,
        "imported_sha256": card.source_sha256,
    }  # kept in model.pt2's card
    with atomic_dir(out, "imported checkpoint") as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_atomic(tmp / "model.safetensors", lambda t: save_file(state, str(t)))
        if export:  # model.pt2 + its card model.json: gated without the factory's source
            kept = ("format", "factory", "weights", "factory_source_sha256", "imported_from", "imported_sha256")
            try:
                exported = export_model(LoadedModel(card, predictor), tmp / "model.pt2")
            except ExportUntraceable as exc:
                data["torch_export"] = f"could not trace: {exc.reason}"
                (log or _stderr)(f"{exc}: gated eagerly; the latency gate times the eager model")
            else:
                data = {**exported, **{k: data[k] for k in kept}, "source": str(out / "model.pt2")}
        write_json_atomic(tmp / CARD_FILE, data)
    return data


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)

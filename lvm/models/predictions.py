"""Predictions only: for models served elsewhere or written in another framework.

``lvm sequences DATASET --ctx C --min-ctx M --out DIR`` writes a sequence manifest: per split, the
chunk index of every sequence's target (``SPLIT_targets.npy``) and of its context
(``SPLIT_context.npy``, ``(N, C)`` int64, ``-1`` = left padding), plus ``manifest.json`` naming the
dataset (content hash, encoder fingerprint), ctx and min_ctx. The user's model reads the context
vectors from the dataset's ``vectors.npy`` and writes one ``(N, D)`` float32 array per split as
``SPLIT.npy`` into a predictions folder, beside the manifest and a ``card.json`` model card. The
gates score those arrays; the ones that must call the model (latency, ablations, determinism) SKIP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvm.errors import LvmError
from lvm.io import atomic_dir, sha256_file, write_json_atomic
from lvm.models.adapters import LoadedModel, ModelCard, read_card_file
from lvm.schemas import read_json_object, read_npy

MANIFEST = "manifest.json"
MANIFEST_KIND = "lvm-sequence-manifest"
SPLITS = ("val", "ood")


def write_manifest(ds, ctx: int, min_ctx: int, out: str | Path, splits=SPLITS) -> dict:
    """Write the sequence manifest of ``ds`` for ``ctx``/``min_ctx`` into a new folder ``out``."""
    out = Path(out)
    manifest = {
        "kind": MANIFEST_KIND,
        "version": 1,
        "dataset": str(ds.path),
        "dataset_hash": ds.content_hash,
        "encoder_fingerprint": ds.encoder_fingerprint,
        "dim": ds.dim,
        "ctx": ctx,
        "min_ctx": min_ctx,
        "splits": {},
    }
    with atomic_dir(out, "sequence manifest") as tmp:
        for split in splits:
            view = ds.sequences(split, ctx, min_ctx)
            idx = np.arange(len(view))
            np.save(tmp / f"{split}_targets.npy", view.targets)
            np.save(
                tmp / f"{split}_context.npy", view.context_indices(idx) if len(view) else np.zeros((0, ctx), np.int64)
            )
            manifest["splits"][split] = {
                "n": int(len(view)),
                "targets_sha256": sha256_file(tmp / f"{split}_targets.npy"),
            }
        write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _read_json(path: Path, what: str) -> dict:
    return read_json_object(path, what)


def load_predictions(folder: str | Path, card_path: str | Path | None = None) -> LoadedModel:
    """A predictions folder: ``manifest.json``, ``card.json`` (or ``card_path``) and ``SPLIT.npy``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LvmError(f"predictions folder {folder} not found")
    manifest = _read_json(folder / MANIFEST, "the sequence manifest written by `lvm sequences`")
    if manifest.get("kind") != MANIFEST_KIND or not isinstance(manifest.get("splits"), dict):
        raise LvmError(f"{folder / MANIFEST}: not an lvm sequence manifest")
    data = read_card_file(card_path or folder / "card.json")
    data.setdefault("ctx", manifest.get("ctx"))
    data.setdefault("min_ctx", manifest.get("min_ctx"))
    data.setdefault("input_dim", manifest.get("dim"))
    data.setdefault("name", folder.name)
    data.update(kind="predictions", source=str(folder))
    card = ModelCard.from_dict(data, where=str(card_path or folder / "card.json"))
    if (card.ctx, card.gated_min_ctx) != (manifest.get("ctx"), manifest.get("min_ctx")):
        raise LvmError(
            f"{folder}: card says ctx={card.ctx}, min_ctx={card.gated_min_ctx} but the manifest was written for "
            f"ctx={manifest.get('ctx')}, min_ctx={manifest.get('min_ctx')}"
        )
    preds = {}
    for split, info in manifest["splits"].items():
        f = folder / f"{split}.npy"
        if not f.is_file():
            continue
        arr = read_npy(f, f"the {split} predictions", mmap_mode="r")
        n = info.get("n") if isinstance(info, dict) else None
        if (
            arr.ndim != 2
            or arr.shape[0] != n
            or arr.shape[1] != card.input_dim
            or not np.issubdtype(arr.dtype, np.floating)
        ):
            raise LvmError(
                f"{f}: expected a float array of shape ({n}, {card.input_dim}) aligned to the manifest; "
                f"got {arr.dtype} {tuple(arr.shape)}"
            )
        preds[split] = np.asarray(arr, dtype=np.float32)
    if not preds:
        raise LvmError(f"{folder}: no predictions (expected {' and/or '.join(f'{s}.npy' for s in manifest['splits'])})")
    card.source_sha256 = sha256_file(folder / MANIFEST)
    loaded = LoadedModel(card, None, preds)
    loaded.manifest = manifest  # type: ignore[attr-defined]
    return loaded


def check_alignment(loaded: LoadedModel, view, folder: str | Path) -> None:
    """Refuse predictions whose manifest does not list exactly the view's sequences."""
    manifest = getattr(loaded, "manifest", {})
    if manifest.get("dataset_hash") not in (None, view.dataset.content_hash):
        raise LvmError(
            f"{folder}: predictions were made for another dataset (manifest hash "
            f"{str(manifest.get('dataset_hash'))[:12]}…, dataset {view.dataset.content_hash[:12]}…)"
        )
    targets = Path(folder) / f"{view.split}_targets.npy"
    if targets.is_file():
        stored = read_npy(targets, "the sequence manifest's targets")
        if stored.shape != view.targets.shape or not np.array_equal(stored, view.targets):
            raise LvmError(
                f"{folder}: {view.split} predictions are aligned to other sequences than this dataset's "
                f"{view.split} split at ctx={view.ctx}, min_ctx={view.min_ctx} (rerun `lvm sequences`)"
            )

"""On-disk formats, checked where they are opened: one pydantic schema per format (dataset
``meta.json``, checkpoint JSON, model card, results file, gate profile) plus the array checks a
dataset folder needs (dtypes, ranks, lengths, finiteness, ordering of positions). A file that does
not fit is refused with one line naming the file, the field and what was expected; sizes are
checked before anything is allocated from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lvm.errors import LvmError

MAX_DIM = 65_536  # vector dims, hidden sizes: anything larger is not an LVM (and would not fit in memory)
MAX_CTX = 4_096
MAX_JSON_BYTES = 256 << 20

Dim = Annotated[int, Field(ge=1, le=MAX_DIM, strict=True)]
Ctx = Annotated[int, Field(ge=1, le=MAX_CTX, strict=True)]
Count = Annotated[int, Field(ge=0, strict=True)]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Status = Literal["GREEN", "AMBER", "RED", "SKIP"]


class _Open(BaseModel):
    """Extra keys are kept (formats grow); declared keys must have the declared type."""

    model_config = ConfigDict(extra="allow")


def read_json(path: Path, what: str) -> Any:
    """JSON from a file; one line when it is missing, too large, not UTF-8, not JSON or too deep."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path} not found ({what})")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise LvmError(f"{path}: {path.stat().st_size:,} bytes is too large for {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise LvmError(f"{path}: JSON nested too deeply for {what}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise LvmError(f"{path}: not valid JSON ({str(exc)[:120]}) for {what}") from None


def one_line(exc: ValidationError, where: str) -> LvmError:
    """The first validation error as one line: file, field, what was expected, what was found."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    found = repr(err.get("input"))
    found = found if len(found) <= 60 else found[:57] + "..."
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return LvmError(f"{where}: field {field}: {err['msg']}; got {found}{more}")


def validate(model: type[BaseModel], data: Any, where: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise one_line(exc, where) from None


# ----------------------------------------------------------------------------- dataset folder


class EncoderMeta(_Open):
    spec: dict | None = None
    pipeline: dict | None = None
    fingerprint: str | None = None


class DatasetCounts(_Open):
    chunks: Annotated[int, Field(ge=1, strict=True)]
    articles: Annotated[int, Field(ge=1, strict=True)]


class DatasetMeta(_Open):
    format_version: Literal[1]
    dim: Dim
    counts: DatasetCounts
    content_hash: Hex64
    encoder: EncoderMeta | None = None
    gate_profile: str | None = None


SPLIT_CODES = (0, 1, 2)


def check_dataset_arrays(
    folder: Path, vectors, article_id: np.ndarray, position: np.ndarray, split: np.ndarray, meta: DatasetMeta
) -> None:
    """Dtypes, ranks, lengths, split codes and the order of positions of a dataset folder's arrays."""
    n = meta.counts.chunks
    if vectors.ndim != 2 or vectors.shape[1] != meta.dim:
        raise LvmError(
            f"{folder}/vectors.npy: expected shape ({n}, {meta.dim}) float32; "
            f"got {tuple(vectors.shape)} {vectors.dtype}"
        )
    if vectors.dtype != np.float32:
        raise LvmError(f"{folder}/vectors.npy: expected float32 vectors; got {vectors.dtype}")
    for name, arr in (("article_id", article_id), ("position", position), ("split", split)):
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise LvmError(
                f"{folder}/{name}.npy: expected a 1-D integer array; got {arr.dtype} of shape {tuple(arr.shape)}"
            )
        if len(arr) != n:
            raise LvmError(
                f"{folder}/{name}.npy: {len(arr)} entries, but meta.json counts {n} chunks: "
                "per-chunk arrays disagree in length (truncated copy?)"
            )
    if len(vectors) != n:
        raise LvmError(
            f"{folder}/vectors.npy: {len(vectors)} vectors, but meta.json counts {n} chunks: "
            "per-chunk arrays disagree in length (truncated copy?)"
        )
    if (article_id < 0).any():
        raise LvmError(
            f"{folder}/article_id.npy: negative article ids (first at chunk {int(np.argmax(article_id < 0))})"
        )
    bad = ~np.isin(split, SPLIT_CODES)
    if bad.any():
        raise LvmError(
            f"{folder}/split.npy: split codes must be 0 (train), 1 (val) or 2 (ood); "
            f"chunk {int(np.argmax(bad))} has {int(split[bad][0])}"
        )
    check_positions(folder, article_id, position)


def check_positions(folder: Path, article_id: np.ndarray, position: np.ndarray) -> None:
    """Each article is one contiguous block of chunks in reading order: positions 0, 1, 2, ...

    Sequences take "the chunk before" by row, so positions that contradict the row order (shifted,
    shuffled, an article split in two blocks) would silently train and gate on wrong targets.
    """
    if not len(article_id):
        return
    new_article = np.r_[True, article_id[1:] != article_id[:-1]]
    expected = np.arange(len(position)) - np.maximum.accumulate(np.where(new_article, np.arange(len(position)), 0))
    wrong = position != expected
    if wrong.any():
        i = int(np.argmax(wrong))
        raise LvmError(
            f"{folder}/position.npy: chunk {i} (article {int(article_id[i])}) has position {int(position[i])}, "
            "expected "
            f"{int(expected[i])}: positions must count 0, 1, 2, ... within each article, in row order"
        )
    starts = article_id[new_article]
    if len(np.unique(starts)) != len(starts):
        ids, counts = np.unique(starts, return_counts=True)
        raise LvmError(
            f"{folder}/article_id.npy: article {int(ids[counts > 1][0])} appears in more than one block of rows"
        )


def check_finite(folder: Path, vectors, block: int = 65_536) -> None:
    """Every vector finite (streamed, so a memory-mapped bank is never read whole)."""
    for start in range(0, len(vectors), block):
        part = np.asarray(vectors[start : start + block])
        bad = ~np.isfinite(part).all(axis=1)
        if bad.any():
            raise LvmError(f"{folder}/vectors.npy: vector {start + int(np.argmax(bad))} is NaN or infinite")


# ----------------------------------------------------------------------------- checkpoints and cards


class CheckpointMeta(_Open):
    format: Literal["lvm-checkpoint"]
    version: Literal[1]
    model_type: Annotated[str, Field(min_length=1, max_length=64)]
    model_config_: dict = Field(alias="model_config")
    input_dim: Dim
    ctx: Ctx
    min_ctx: Ctx = 1
    encoder_fingerprint: str | None
    dataset_hash: str | None
    n_params: Count | None = None
    weights_sha256: Hex64 | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="after")
    def _min_ctx_le_ctx(self):
        if self.min_ctx > self.ctx:
            raise ValueError(f"min_ctx ({self.min_ctx}) must not exceed ctx ({self.ctx})")
        return self

    @field_validator("model_config_")
    @classmethod
    def _sizes(cls, cfg: dict) -> dict:
        for k, v in cfg.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{k} must be finite")
            if isinstance(v, int) and not 0 <= v <= MAX_DIM:
                raise ValueError(f"{k} = {v} is outside [0, {MAX_DIM}]: refused before allocating anything")
        return cfg


def check_weights(path: Path, state: dict) -> None:
    """Loaded safetensors weights: floating point and finite."""
    import torch

    for name, t in state.items():
        if not torch.is_floating_point(t):
            raise LvmError(f"{path}: tensor {name} is {t.dtype}; weights must be floating point")
        if not torch.isfinite(t).all():
            raise LvmError(f"{path}: tensor {name} holds NaN or infinite values")


# ----------------------------------------------------------------------------- results files


class ResultRow(_Open):
    gate: Annotated[str, Field(min_length=1, max_length=200)]
    status: Status
    metrics: dict = Field(default_factory=dict)
    thresholds: list = Field(default_factory=list)
    message: str = ""
    dataset: str | None = None
    checkpoint: str | None = None
    split: str | None = None
    seconds: float = 0.0
    comparability: dict | None = None
    comparability_key: str | None = None
    per_sequence: list[float | None] | None = None
    per_sequence_article: list[int] | None = None
    vector_sketch: list[float] | None = None
    checkpoint_path: str | None = None
    dataset_path: str | None = None

    @field_validator("thresholds")
    @classmethod
    def _rules(cls, rules: list) -> list:
        for r in rules:
            if not isinstance(r, dict) or not isinstance(r.get("metric"), str):
                raise ValueError("each threshold must be an object with a metric name")
        return rules


class ProfileRef(_Open):
    name: str
    version: int


class ResultsDoc(_Open):
    schema_: Literal["lvm-gate-results"] = Field(alias="schema")
    schema_version: Literal[1, 2]
    created_at: str | None = None
    profile: ProfileRef | None = None
    results: list[ResultRow]
    run: dict | None = None
    models: dict | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ----------------------------------------------------------------------------- gate profiles


class Rule(_Open):
    metric: Annotated[str, Field(min_length=1)]
    min_green: float | None = None
    min_amber: float | None = None
    max_green: float | None = None
    max_amber: float | None = None
    worst: Literal["GREEN", "AMBER", "RED"] = "RED"
    split: str | None = None
    why: str = ""

    @model_validator(mode="after")
    def _one_direction(self):
        if (self.min_green is None) == (self.max_green is None):
            raise ValueError(f"rule for {self.metric!r} needs exactly one of min_green / max_green")
        for k in ("min_green", "min_amber", "max_green", "max_amber"):
            v = getattr(self, k)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{k} must be a finite number")
        return self


class GateTable(_Open):
    cause: str = ""
    rules: list[Rule] = Field(default_factory=list)


class EpochRuleModel(_Open):
    epoch: Annotated[int, Field(ge=0, strict=True)]
    min: float
    action: Literal["abort", "warn"]
    why: str = ""


class ProfileHead(_Open):
    name: str | None = None
    version: int = 1
    extends: str | None = None
    encoders: list[str] = Field(default_factory=list)
    dim: Dim | None = None


class ProfileDoc(_Open):
    profile: ProfileHead = Field(default_factory=ProfileHead)
    gates: dict[str, GateTable] = Field(default_factory=dict)
    training: dict[str, list[EpochRuleModel]] = Field(default_factory=dict)
    regression: dict = Field(default_factory=dict)

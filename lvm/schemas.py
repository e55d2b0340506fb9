"""On-disk formats, checked where they are opened: one pydantic schema per format (dataset
``meta.json``, checkpoint JSON, model card, results file, gate profile) plus the array checks a
dataset folder needs (dtypes, ranks, lengths, finiteness, ordering of positions). A file that does
not fit is refused with one line naming the file, the field and what was expected; sizes are
checked before anything is allocated from them.
"""

from __future__ import annotations

import json
import math
import re
import tokenize
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
    """JSON from a file a user may have written; one line (``LvmError``) when it is missing, a
    folder, unreadable, too large, not UTF-8, not JSON, or nested too deep. Every reader of a
    user's JSON file goes through here (or ``parse_json`` for JSON text)."""
    path = Path(path)
    if path.is_dir():
        raise LvmError(f"{path} is a folder, not a file ({what})")
    if not path.is_file():
        raise LvmError(f"{path} not found ({what})")
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise LvmError(f"{path}: {size:,} bytes is too large for {what}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LvmError(f"{path}: not UTF-8 text ({what})") from None
    except OSError as exc:
        raise LvmError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}) ({what})") from None
    return parse_json(text, f"{path}: ", what)


def parse_json(text: str, where: str, what: str) -> Any:
    """JSON text (a file's, an option's) parsed; one line when it is not JSON or is nested too deep
    (``RecursionError``: Python's parser recurses once per level)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise LvmError(f"{where}JSON nested too deeply for {what}") from None
    except MemoryError:
        raise LvmError(f"{where}JSON too large to parse for {what}") from None
    except ValueError as exc:  # JSONDecodeError, and an integer of more than 4300 digits
        raise LvmError(f"{where}not valid JSON ({str(exc)[:120]}) for {what}") from None


# What a damaged or hostile .npy header raises while numpy parses it (``allow_pickle=False``: no
# pickle is ever read): a bad magic or dtype (ValueError), a header that is not a Python literal
# (SyntaxError, tokenize.TokenError), one nested too deep (RecursionError), a shape too large to
# allocate (MemoryError), a truncated file (EOFError), an unreadable one (OSError).
NPY_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    MemoryError,
    RecursionError,
    EOFError,
    OSError,
    TypeError,
    OverflowError,
)


def read_npy(path: Path, what: str, mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    """A user's ``.npy`` array (never a pickle); one line (``LvmError``) when it cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path} not found ({what})")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a huge shape overflows numpy's size product
            arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except NPY_ERRORS as exc:
        why = (str(exc).splitlines() or [""])[0][:120]
        raise LvmError(f"{path}: not a readable .npy array ({type(exc).__name__}: {why}) ({what})") from None
    if not isinstance(arr, np.ndarray):  # np.load of an .npz gives an NpzFile
        raise LvmError(f"{path}: expected one .npy array, not an .npz archive ({what})")
    return arr


def nonfinite_path(obj: Any, path: str = "") -> str | None:
    """The key path of the first NaN, ±Infinity or out-of-float-range integer in a JSON document, or None."""
    if isinstance(obj, bool):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "(top level)")
    if isinstance(obj, int):
        return None if abs(obj) < 2**1023 else (path or "(top level)")
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)  # type: ignore[assignment]
    else:
        return None
    for k, v in items:
        found = nonfinite_path(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def read_json_object(path: Path, what: str) -> dict:
    """``read_json``, and the document must be a JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise LvmError(f"{path}: expected a JSON object ({what}); got {type(data).__name__}")
    return data


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
    # per split (written by every build; checked against split.npy / article_id.npy when present)
    train_chunks: Count | None = None
    train_articles: Count | None = None
    val_chunks: Count | None = None
    val_articles: Count | None = None
    ood_chunks: Count | None = None
    ood_articles: Count | None = None


class DatasetMeta(_Open):
    format_version: Literal[1]
    dim: Dim
    counts: DatasetCounts
    content_hash: Hex64
    encoder: EncoderMeta | None = None
    gate_profile: str | None = None

    @field_validator("format_version", mode="before")
    @classmethod
    def _integer_version(cls, v):
        if isinstance(v, bool):  # true == 1 in Python, not in the format
            raise ValueError("format_version must be the integer 1")
        return v


class ViewParent(_Open):
    """``meta.json["parent"]`` of a view (a filtered dataset that reads through its parent)."""

    path: str
    relative: str | None = None
    content_hash: Hex64
    rows: Literal["rows.npy"]


def check_view_rows(folder: Path, rows: np.ndarray, meta: DatasetMeta, n_parent: int) -> None:
    """``rows.npy`` of a view: one parent chunk index per chunk, inside the parent."""
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise LvmError(f"{folder}/rows.npy: expected a 1-D integer array; got {rows.dtype} of shape {rows.shape}")
    if len(rows) != meta.counts.chunks:
        raise LvmError(f"{folder}/rows.npy: {len(rows)} rows, but meta.json counts {meta.counts.chunks} chunks")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_parent):
        raise LvmError(f"{folder}/rows.npy: row indices must lie in 0..{n_parent - 1} (the parent's chunks)")


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
    check_split_counts(folder, article_id, split, meta.counts)


def check_split_counts(folder: Path, article_id: np.ndarray, split: np.ndarray, counts: DatasetCounts) -> None:
    """meta.json's per-split counts (when recorded) are the arrays' own: a count edited or carried over
    from other data would misstate every n the gates report. Runs after ``check_positions`` (each article
    one block of rows) and the split-code check, so articles are counted by their first rows: O(N), no sort."""
    starts = np.r_[True, article_id[1:] != article_id[:-1]] if len(article_id) else np.zeros(0, dtype=bool)
    n_articles = int(starts.sum())
    if counts.articles != n_articles:
        raise LvmError(f"{folder}/meta.json: counts.articles is {counts.articles}, but article_id.npy has {n_articles}")
    codes = split.astype(np.int64)
    found = {"chunks": np.bincount(codes, minlength=3), "articles": np.bincount(codes[starts], minlength=3)}
    for code, name in enumerate(("train", "val", "ood")):
        for what, actual in found.items():
            recorded = getattr(counts, f"{name}_{what}")
            if recorded is not None and recorded != int(actual[code]):
                raise LvmError(
                    f"{folder}/meta.json: counts.{name}_{what} is {recorded}, but the arrays hold {int(actual[code])} "
                    f"{name} {what} (meta.json edited or copied from other data); rebuild it"
                )


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
        for key in ("ctx", "input_dim"):  # the model was built from model_config: the card must agree
            if key in self.model_config_ and self.model_config_[key] != getattr(self, key):
                raise ValueError(
                    f"model_config {key} ({self.model_config_[key]!r}) differs from {key} ({getattr(self, key)})"
                )
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
    """One gate result, the one row type of the plugin, the results file, ``lvm compare`` and
    ``lvm leaderboard``: what the gate found (``lvm.gates.GateResult``'s fields), where it ran
    (checkpoint name, dataset, split, pytest node id, paths) and how it compares (comparability key,
    vector sketch, per-sequence scores). Made by ``lvm.report.recorder.Recorder``.

    ``model_card``, ``training_history`` and ``per_sequence_file`` live only in a run: when the file is
    written the first two move into its ``models`` table and the third is read into ``per_sequence``.
    Every field but gate and status is optional, so every v1 and v2 file still loads."""

    gate: Annotated[str, Field(min_length=1, max_length=200)]
    status: Status
    metrics: dict = Field(default_factory=dict)
    thresholds: list = Field(default_factory=list)
    message: str = ""
    dataset: str | None = None
    checkpoint: str | None = None  # the checkpoint's name (``lvm.report.recorder``: its card's name, or NAME=)
    split: str | None = None
    seconds: float = 0.0
    spec_version: int | None = None
    dataset_hash: str | None = None  # provenance (every byte of the data), not part of the comparability key
    vector_sketch: list[float] | None = None
    comparability: dict | None = None
    comparability_key: str | None = None
    profile: str | None = None
    nodeid: str | None = None
    checkpoint_path: str | None = None  # relative to the results file (v2)
    dataset_path: str | None = None
    per_sequence: list[float | None] | None = None
    per_sequence_article: list[int] | None = None
    model_card: dict | None = None  # in a run only (the file's ``models`` table)
    training_history: dict | None = None  # in a run only (the file's ``models`` table)
    per_sequence_file: str | None = None  # in a run only: where the per-sequence scores wait

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


# A threshold in a profile: a finite number as TOML writes it (an integer or a float; not a string,
# a bool, nan or inf, which would otherwise be coerced or compare false forever).
Threshold = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Rule(_Open):
    metric: Annotated[str, Field(min_length=1)]
    min_green: Threshold | None = None
    min_amber: Threshold | None = None
    max_green: Threshold | None = None
    max_amber: Threshold | None = None
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
    min: Threshold
    action: Literal["abort", "warn"]
    why: str = ""


class ProfileHead(_Open):
    name: str | None = None
    version: int = 1
    extends: str | None = None
    encoders: list[str] = Field(default_factory=list)
    dim: Dim | None = None


class TrainingTable(_Open):
    val_cosine: list[EpochRuleModel] = Field(default_factory=list)
    ood_sentinel: list[EpochRuleModel] = Field(default_factory=list)
    reference_samples_per_epoch: Annotated[int, Field(ge=1, strict=True)] | None = None


class ProfileDoc(_Open):
    profile: ProfileHead = Field(default_factory=ProfileHead)
    gates: dict[str, GateTable] = Field(default_factory=dict)
    training: TrainingTable = Field(default_factory=TrainingTable)
    regression: dict = Field(default_factory=dict)


# ----------------------------------------------------------------------------- dataset side files


def read_jsonl(path: Path, what: str) -> list:
    """One JSON value per line; one line naming the file and line when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path} not found ({what})")
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    rows.append(json.loads(line))
                except (ValueError, RecursionError):
                    raise LvmError(f"{path}:{lineno}: not valid JSON ({what})") from None
    except UnicodeDecodeError:
        raise LvmError(f"{path}: not UTF-8 text ({what})") from None
    return rows


_PLAIN_STRING = re.compile(r'"[^"\\\x00-\x1f]*"')  # a JSON string line without escapes or control characters


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _all_plain(text: str, lines: list[str]) -> bool:
    """Every line is a JSON string without escapes or control characters, decided on the whole file
    at C speed: no backslash, no control character but the newlines, a quote opening the file and
    closing it, every line boundary a closing quote + newline + opening quote, every line at least
    2 characters, and no other quote anywhere (2 per line)."""
    n = len(lines)
    return (
        n > 0
        and "\\" not in text
        and text.startswith('"')
        and text.rstrip("\n").endswith('"')
        and text.count('"') == 2 * n
        and text.count('"\n"') == n - 1
        and not _CONTROL.search(text)
        and min(map(len, lines)) >= 2  # a lone '"' would count as both quotes of its line
    )


def read_json_strings(path: Path, what: str) -> list:
    """``read_jsonl`` for a file of one JSON value per line that is mostly plain strings: a line that
    is a string without escapes is its own text between the quotes (no parser call); any other line
    goes through ``json.loads``, with the same one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"{path} not found ({what})")
    try:
        text = path.read_bytes().decode("utf-8")
        lines = text.split("\n")
    except UnicodeDecodeError:
        raise LvmError(f"{path}: not UTF-8 text ({what})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if _all_plain(text, lines):
        return [line[1:-1] for line in lines]
    plain = _PLAIN_STRING.fullmatch
    rows: list = [line[1:-1] if plain(line) else None for line in lines]
    for i, line in enumerate(lines):
        if rows[i] is None:
            try:
                rows[i] = json.loads(line)
            except (ValueError, RecursionError):
                raise LvmError(f"{path}:{i + 1}: not valid JSON ({what})") from None
    return rows


def check_texts(path: Path, texts: list, n_chunks: int) -> list[str]:
    """``texts.jsonl``: one JSON string per chunk."""
    if len(texts) != n_chunks:
        raise LvmError(f"{path}: {len(texts)} lines, but the dataset has {n_chunks} chunks (one text per chunk)")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise LvmError(f"{path}:{bad + 1}: expected a JSON string (the chunk's text); got {type(texts[bad]).__name__}")
    return texts


class ArticleRow(_Open):
    """One line of ``articles.jsonl``; readers index the required keys (title and topic via .get)."""

    article_id: Count | None = None  # when present: the line's own index (the dense id)
    source_id: str | int
    title: str = ""
    topic: str = ""
    split: Literal["train", "val", "ood"]
    first_chunk: Count
    n_chunks: Count


_ARTICLE_ROWS = None


def check_articles(path: Path, rows: list, article_id: np.ndarray) -> list[dict]:
    """``articles.jsonl``: one object per article, indexed by the dense article ids of ``article_id.npy``,
    whose ``first_chunk`` / ``n_chunks`` are that article's block of rows (``n_chunks`` 0: no rows)."""
    max_article_id = int(article_id.max()) if len(article_id) else -1
    from pydantic import TypeAdapter

    global _ARTICLE_ROWS
    if _ARTICLE_ROWS is None:
        _ARTICLE_ROWS = TypeAdapter(list[ArticleRow])
    try:
        _ARTICLE_ROWS.validate_python(rows)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        raise one_line(exc, f"{path}:{int(loc[0]) + 1}" if loc and isinstance(loc[0], int) else str(path)) from None
    bad = next((i for i, r in enumerate(rows) if r.get("article_id", i) != i), None)
    if bad is not None:
        raise LvmError(
            f"{path}:{bad + 1}: article_id is {rows[bad]['article_id']!r}, but line {bad + 1} is article {bad} "
            "(rows are indexed by the dense article ids 0..A-1)"
        )
    if len(rows) <= max_article_id:
        raise LvmError(
            f"{path}: {len(rows)} articles, but article_id.npy names article {max_article_id}: "
            "article ids must index this table (0..A-1)"
        )
    ids = np.asarray(article_id, dtype=np.int64)
    count = np.bincount(ids, minlength=len(rows)) if len(ids) else np.zeros(len(rows), dtype=np.int64)
    first = np.full(len(rows), -1, dtype=np.int64)  # each article is one block of rows (check_positions)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
    first[ids[starts]] = starts
    cap = 2**62  # a recorded count beyond any array's length cannot match; clipped to fit int64
    said_n = np.fromiter((min(r["n_chunks"], cap) for r in rows), dtype=np.int64, count=len(rows))
    said_f = np.fromiter((min(r["first_chunk"], cap) for r in rows), dtype=np.int64, count=len(rows))
    wrong = np.flatnonzero((said_n != count) | ((count > 0) & (said_f != first)))
    if len(wrong):
        i = int(wrong[0])
        r, n, f = rows[i], int(count[i]), int(first[i])
        raise LvmError(
            f"{path}:{i + 1}: article {i} holds chunks {f}..{f + n - 1} ({n}) in article_id.npy, but its row says "
            f"first_chunk {r['first_chunk']!r:.30}, n_chunks {r['n_chunks']!r:.30}; rebuild the dataset"
        )
    return rows


# ----------------------------------------------------------------------------- training runs

NonNeg = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]
PosInt = Annotated[int, Field(strict=True, ge=1)]
StrictBool = Annotated[bool, Field(strict=True)]


class LossSettings(_Open):
    lambda_mse: NonNeg = 1.0
    lambda_cos: NonNeg = 0.0
    lambda_info: NonNeg = 0.0
    lambda_moment: NonNeg = 0.0
    lambda_variance: NonNeg = 0.0
    # logits are cos / tau: below 1e-4 they overflow float32 (exp(1 / 5e-324) is NaN); the seeds use 0.07
    tau: Annotated[float, Field(strict=True, ge=1e-4, le=100.0, allow_inf_nan=False)] = 0.07
    adaptive_info: StrictBool = False
    adaptive_base: NonNeg = 0.5
    adaptive_min: NonNeg = 0.01
    adaptive_max: NonNeg = 0.5
    adaptive_decay: Fraction = 0.99
    variance_floor_ratio: NonNeg = 0.5

    @model_validator(mode="after")
    def _clamps(self):
        if self.adaptive_min > self.adaptive_max:
            raise ValueError(f"adaptive_min ({self.adaptive_min}) must not exceed adaptive_max ({self.adaptive_max})")
        weights = [self.lambda_mse, self.lambda_cos, self.lambda_info, self.lambda_moment, self.lambda_variance]
        adaptive = self.adaptive_info and self.adaptive_max > 0  # λ_info then comes from the adaptive clamp
        if not any(w > 0 for w in weights) and not adaptive:
            raise ValueError(
                "no loss term has a positive weight (lambda_mse, lambda_cos, lambda_info, lambda_moment, "
                "lambda_variance are all 0): nothing would be trained; give one a weight > 0"
            )
        return self


class TrainSettings(_Open):
    """``lvm train``'s options and a run's ``config.json`` (``lvm.train.config.TrainConfig``)."""

    dataset: str
    model: str
    model_config_: dict = Field(alias="model_config")
    ctx: Ctx
    min_ctx: Ctx
    epochs: Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
    batch_size: Annotated[int, Field(strict=True, ge=1, le=1 << 24)]
    lr: Positive
    weight_decay: NonNeg
    warmup_frac: Fraction
    min_lr_ratio: Fraction
    grad_clip: NonNeg
    ema_decay: Annotated[float, Field(strict=True, ge=0, lt=1, allow_inf_nan=False)]
    max_per_article: Annotated[int, Field(strict=True, ge=0, le=1 << 24)]  # as the CLI flag's bound
    loss: LossSettings
    seed: Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
    warm_start: str | None = None
    warm_start_lr_scale: Positive
    gate_profile: str | None = None
    kill_switches: StrictBool
    eval_batch_size: Annotated[int, Field(strict=True, ge=1, le=1 << 24)]
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")]
    threads: Annotated[int, Field(strict=True, ge=1, le=4096)] | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_ctx > self.ctx:
            raise ValueError(f"min_ctx ({self.min_ctx}) must not exceed ctx ({self.ctx})")
        CheckpointMeta._sizes(self.model_config_)
        if "input_dim" in self.model_config_:
            raise ValueError("model_config must not set input_dim: it is the dataset's dim")
        if self.model_config_.get("ctx", self.ctx) != self.ctx:
            raise ValueError(f"model_config ctx ({self.model_config_['ctx']!r}) differs from ctx ({self.ctx})")
        return self


def load_resume_state(path: Path, map_location) -> dict:
    """A run's ``resume.pt`` (``weights_only``: tensors and plain data), its keys and their types checked."""
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise LvmError(f"nothing to resume in {path.parent} (no {path.name})")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles it then refuses: the refusal says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways; weights_only ran none of it
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        named = [ln.split("error:", 1)[-1].strip() for ln in lines if "GLOBAL" in ln or "Unpickler error" in ln]
        why = (named or lines or [type(exc).__name__])[0]
        raise LvmError(f"{path}: not a readable resume state (refused or corrupt: {why[:160]})") from None
    if not isinstance(state, dict):
        raise LvmError(f"{path}: expected the trainer's resume state (a dict); got {type(state).__name__}")
    kinds = {
        "epoch": int,
        "model": dict,
        "optimizer": dict,
        "scheduler": dict,
        "ema": dict,
        "ema_steps": int,
        "adaptive": dict,
        "torch_rng": torch.Tensor,
    }
    for key, kind in kinds.items():
        v = state.get(key)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise LvmError(f"{path}: {key} must be {kind.__name__}; got {type(v).__name__}")
    if state["epoch"] < 0 or state["ema_steps"] < 0:
        raise LvmError(f"{path}: epoch and ema_steps must be >= 0")
    for key in ("model", "ema"):
        bad = [k for k, v in state[key].items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise LvmError(f"{path}: {key}.{bad[0]} is not a tensor")
    if state["torch_rng"].dtype != torch.uint8 or state["torch_rng"].dim() != 1:
        raise LvmError(f"{path}: torch_rng must be a 1-D uint8 tensor (torch.get_rng_state())")
    _check_schedule_state(path, state["scheduler"], state["optimizer"])
    emas = [state["adaptive"].get(k) for k in ("ema_mse", "ema_info")] if state["adaptive"] else [None, None]
    if (emas[0] is None) != (emas[1] is None) or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)) for v in emas
    ):
        raise LvmError(f"{path}: adaptive must hold finite numbers ema_mse and ema_info (or neither)")
    return state


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_schedule_state(path: Path, sched: dict, opt: dict) -> None:
    """The LR scheduler's and the optimizer's plain numbers (steps, learning rates, betas)."""
    for key in ("last_epoch", "_step_count"):
        v = sched.get(key, 0)
        if not isinstance(v, int) or isinstance(v, bool) or v < -1:
            raise LvmError(f"{path}: scheduler.{key} must be a step count; got {type(v).__name__}")
    for key in ("base_lrs", "_last_lr"):
        v = sched.get(key, [])
        if not isinstance(v, list) or not all(_is_num(x) for x in v):
            raise LvmError(f"{path}: scheduler.{key} must be a list of learning rates")
    groups = opt.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise LvmError(f"{path}: optimizer.param_groups must be a list of objects")
    for g in groups:
        for key in ("lr", "eps", "weight_decay", "initial_lr"):
            if key in g and not _is_num(g[key]):
                raise LvmError(f"{path}: optimizer.param_groups.{key} must be a finite number; got {g[key]!r:.40}")
        flags = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay")
        bad = [k for k in flags if g.get(k) is not None and not isinstance(g.get(k), bool)]
        if bad:
            raise LvmError(f"{path}: optimizer.param_groups.{bad[0]} must be true, false or null")
        betas = g.get("betas", (0.9, 0.999))
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(_is_num(b) for b in betas):
            raise LvmError(f"{path}: optimizer.param_groups.betas must be two numbers")
    if not isinstance(opt.get("state"), dict):
        raise LvmError(f"{path}: optimizer.state must be an object")


def check_resume_fits(path: Path, state: dict, model, optimizer) -> None:
    """After loading: the EMA weights and the optimizer's moments have the model's keys and shapes."""
    import torch

    ref = model.state_dict()
    ema = state["ema"]
    if ema:
        if set(ema) != set(ref):
            raise LvmError(
                f"{path}: the EMA weights name other tensors than the model ({sorted(set(ema) ^ set(ref))[:3]})"
            )
        for k, t in ema.items():
            if t.shape != ref[k].shape or t.dtype != ref[k].dtype:
                raise LvmError(
                    f"{path}: ema.{k} is {t.dtype} {tuple(t.shape)}; "
                    f"the model's is {ref[k].dtype} {tuple(ref[k].shape)}"
                )
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if not isinstance(v, torch.Tensor):
                    raise LvmError(f"{path}: optimizer state {k} is {type(v).__name__}, not a tensor")
                if k == "step" and v.numel() == 1 and v.is_floating_point():
                    continue
                if v.shape != p.shape or not v.is_floating_point():
                    raise LvmError(
                        f"{path}: optimizer state {k} {tuple(v.shape)} does not fit a parameter {tuple(p.shape)}"
                    )


class HistoryRow(_Open):
    epoch: Annotated[int, Field(strict=True, ge=0)]
    val_cosine: Annotated[float, Field(strict=True)]


class HistoryEvent(_Open):
    epoch: Annotated[int, Field(strict=True, ge=0)] = 0


class TrainingHistory(_Open):
    """A run's ``training_history.json``, as far as resuming and the gates read it."""

    epochs: list[HistoryRow] = Field(default_factory=list)
    events: list[HistoryEvent] = Field(default_factory=list)
    aborted: HistoryEvent | None = None
    best_epoch: Annotated[int, Field(strict=True, ge=0)] | None = None
    best_val_cosine: float | None = None
    resumed_at_epoch: list[int] = Field(default_factory=list)

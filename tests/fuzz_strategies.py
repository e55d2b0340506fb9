"""Hypothesis strategies for the fuzz suite (``tests/test_fuzz.py``): corrupted dataset folders,
checkpoints, ``.npz`` files, corpora, results files, gate profiles and pickles that try to run code.

Every strategy draws a ``Mutation``: a label (shown when an example fails), a function that applies
it to a copy of a valid input, and what the CLI must do with the result: ``REFUSE`` (the input is
certainly invalid: exit 2 with one line) or ``EITHER`` (the input may be valid: exit 0 is fine too).
Whether an input is invalid is decided here, independently of ``lvm.schemas`` (an oracle).
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

REFUSE, EITHER = "refuse", "either"
DATASET_ARRAYS = ("vectors", "article_id", "position", "split")
DATASET_OTHER_FILES = (
    "texts.jsonl",
    "articles.jsonl",
    "index.faiss",
    "index.json",
    "probe_vectors.npy",
    ".lvm-output",
)
CHECKPOINT_PREFIX = "lvm-checkpoint"


@dataclass
class Mutation:
    label: str
    apply: Callable[[Path], None]  # applied to the folder (or file) it was drawn for
    expect: str = EITHER


def worst(expects) -> str:
    return REFUSE if REFUSE in expects else EITHER


# ----------------------------------------------------------------------------- values and bytes


def _nested(depth: int, leaf=0):
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


SPECIAL_INTS = [0, -1, 1, 2, 3, 5, 8, 255, 4096, 4097, 65_536, 65_537, 10**9, -(10**9), 2**31, 2**63, -(2**63), 10**30]
SPECIAL_FLOATS = [0.0, -0.0, 0.5, 1.5, -2.5, 8.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf]
SPECIAL_STRINGS = ["", " ", "8", "1", "null", "nan", "GREEN", "RED", "amn", "../../x", "\x00", "é☃", "a" * 5000]

junk = st.deferred(
    lambda: st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(SPECIAL_INTS),
        st.integers(),
        st.sampled_from(SPECIAL_FLOATS),
        st.floats(),
        st.sampled_from(SPECIAL_STRINGS),
        st.text(max_size=12),
        st.lists(st.one_of(st.integers(-3, 3), st.none(), st.text(max_size=3)), max_size=4),
        st.dictionaries(st.text(max_size=6), st.one_of(st.integers(-3, 3), st.none(), st.text(max_size=3)), max_size=3),
        st.integers(1, 120).map(_nested),
    )
)


def dumps(obj) -> str:
    """JSON text (NaN/Infinity literals allowed, as Python writes them)."""
    return json.dumps(obj, allow_nan=True)


@st.composite
def corrupt_bytes(draw, data: bytes) -> tuple[bytes, str]:
    """A byte-level corruption of ``data`` and its label."""
    op = draw(
        st.sampled_from(["truncate", "flip", "insert", "garbage", "empty", "not-utf8", "append", "zeros", "deep-json"])
    )
    if op == "truncate":
        k = draw(st.integers(0, max(len(data) - 1, 0)))
        return data[:k], f"truncated to {k} bytes"
    if op == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(1, 255))
        return data[:i] + bytes([data[i] ^ b]) + data[i + 1 :], f"byte {i} xor {b}"
    if op == "insert":
        i = draw(st.integers(0, len(data)))
        blob = draw(st.binary(min_size=1, max_size=16))
        return data[:i] + blob + data[i:], f"{len(blob)} bytes inserted at {i}"
    if op == "garbage":
        return draw(st.binary(max_size=256)), "random bytes"
    if op == "not-utf8":
        return b"\xff\xfe\x80" + data, "not UTF-8"
    if op == "append":
        return data + draw(st.binary(min_size=1, max_size=64)), "junk appended"
    if op == "zeros":
        return bytes(len(data)), "all zero bytes"
    if op == "deep-json":
        n = draw(st.sampled_from([1_000, 100_000]))
        return b"[" * n + b"]" * n, f"JSON nested {n} deep"
    return b"", "empty file"


# ----------------------------------------------------------------------------- JSON documents


def json_paths(obj, prefix=(), depth=0, max_depth=7, max_items=6):
    yield prefix
    if depth >= max_depth:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, (*prefix, k), depth + 1, max_depth, max_items)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:max_items]):
            yield from json_paths(v, (*prefix, i), depth + 1, max_depth, max_items)


def get_path(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def set_path(doc, path, value):
    if not path:
        return value
    get_path(doc, path[:-1])[path[-1]] = value
    return doc


@st.composite
def json_edit(draw, doc, focus: tuple = ()) -> tuple[object, tuple, str]:
    """One edit of a JSON document (in place; returns the new root): (doc, path, label).

    ``focus``: top-level keys drawn more often (the validated fields of a format)."""
    paths = list(json_paths(doc))
    focused = [p for p in paths if p and p[0] in focus]
    path = draw(st.sampled_from(focused)) if focused and draw(st.booleans()) else draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "replace", "delete", "add-key", "stringify", "wrap"]))
    where = "/".join(map(str, path)) or "(root)"
    old = get_path(doc, path)
    if op == "delete" and path:
        parent = get_path(doc, path[:-1])
        del parent[path[-1]]
        return doc, path, f"{where} deleted"
    if op == "add-key" and isinstance(old, dict):
        key = draw(st.sampled_from(["extra", "__proto__", "", "format", "ctx", "status", "metrics"]))
        old[key] = draw(junk)
        return doc, (*path, key), f"{where}/{key} added"
    if op == "stringify":
        return set_path(doc, path, str(old)), path, f"{where} -> str"
    if op == "wrap":
        return set_path(doc, path, [old]), path, f"{where} -> [value]"
    value = draw(junk)
    return set_path(doc, path, value), path, f"{where} = {short(value)}"


def short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


@st.composite
def json_text_mutation(draw, doc, focus: tuple = (), max_edits: int = 3) -> tuple[bytes, list[tuple], str]:
    """Either 1..max_edits structural edits of ``doc`` (written as JSON) or a byte-level corruption of
    its text: (bytes, edited paths, label). Byte corruptions report the path ``("<bytes>",)``."""
    doc = json.loads(json.dumps(doc))
    if draw(st.integers(0, 4)) == 0:
        data, label = draw(corrupt_bytes(json.dumps(doc, indent=1).encode()))
        return data, [("<bytes>",)], label
    labels, paths = [], []
    for _ in range(draw(st.integers(1, max_edits))):
        doc, path, label = draw(json_edit(doc, focus))
        paths.append(path)
        labels.append(label)
    return dumps(doc).encode(), paths, "; ".join(labels)


def parses_as_json_object(data: bytes):
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


# ----------------------------------------------------------------------------- dataset folders (oracle)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def meta_valid(meta, n_chunks: int, dim: int) -> bool:
    """Independent check of a dataset meta.json (the validated fields only)."""
    if not isinstance(meta, dict) or meta.get("format_version") != 1 or not is_int(meta.get("format_version")):
        return False
    if not is_int(meta.get("dim")) or meta["dim"] != dim:
        return False
    counts = meta.get("counts")
    if not isinstance(counts, dict) or not is_int(counts.get("chunks")) or counts["chunks"] != n_chunks:
        return False
    if not is_int(counts.get("articles")) or counts["articles"] < 1:
        return False
    h = meta.get("content_hash")
    if not isinstance(h, str) or len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        return False
    enc = meta.get("encoder")
    if enc is not None:
        if not isinstance(enc, dict):
            return False
        if any(enc.get(k) is not None and not isinstance(enc.get(k), dict) for k in ("spec", "pipeline")):
            return False
        if enc.get("fingerprint") is not None and not isinstance(enc.get("fingerprint"), str):
            return False
    return meta.get("gate_profile") is None or isinstance(meta.get("gate_profile"), str)


def arrays_valid(vectors, article_id, position, split, n: int, dim: int) -> bool:
    """Independent check of a dataset's arrays: dtypes, shapes, finiteness, codes, row order."""
    if vectors.dtype != np.dtype("<f4") or vectors.shape != (n, dim):
        return False
    for a in (article_id, position, split):
        if a.ndim != 1 or len(a) != n or a.dtype.kind not in "iu":
            return False
    if not np.isfinite(vectors).all() or (article_id < 0).any() or not np.isin(split, (0, 1, 2)).all():
        return False
    seen, prev, expected = set(), None, 0
    for a, p in zip(article_id.tolist(), position.tolist(), strict=True):
        if a != prev:
            if a in seen:
                return False
            seen.add(a)
            prev, expected = a, 0
        if p != expected:
            return False
        expected += 1
    return True


def _save(path: Path, arr: np.ndarray, allow_pickle: bool = False) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=allow_pickle)


ARRAY_DTYPES = ["int8", "uint8", "int16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64"]
ARRAY_DTYPES += ["complex64", "bool", "<U4", "S4", ">f4", ">i8", "object", "datetime64[s]", "V8"]


def _retype(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "object":
        return arr.astype(object)
    if dtype == "V8":
        return np.zeros(arr.shape, dtype="V8")
    try:
        if dtype.startswith("datetime"):
            return arr.astype(np.int64).astype(dtype)
        with np.errstate(all="ignore"):
            return arr.astype(dtype)
    except (ValueError, TypeError):  # texts as numbers: same shape, that dtype
        return np.zeros(arr.shape, dtype=dtype)


@st.composite
def array_edit(draw, name: str, arr: np.ndarray) -> tuple[np.ndarray, str, bool]:  # noqa: C901 - a branch per kind of damage
    """A changed copy of one dataset array, its label, and whether it may be stored with pickles."""
    arr = arr.copy()
    if arr.ndim == 0 or not len(arr):
        return arr, f"{name} left as is", False
    ops = ["dtype", "rank", "length", "set", "shuffle", "add", "fortran"]
    if name == "vectors" and arr.ndim == 2 and arr.dtype.kind == "f":
        ops += ["nonfinite", "row", "row", "width"]
    if name == "article_id":
        ops += ["merge", "fraction", "rename"]
    if name == "position":
        ops += ["shift", "shift"]
    if name == "split":
        ops += ["code", "code"]
    if arr.dtype.kind not in "iufb":  # texts: no arithmetic
        ops = ["dtype", "rank", "length", "shuffle", "fortran"]
    op = draw(st.sampled_from(ops))
    n = len(arr)
    i = draw(st.integers(0, n - 1))
    if op == "dtype":
        dtype = draw(st.sampled_from(ARRAY_DTYPES))
        return _retype(arr, dtype), f"{name} as {dtype}", dtype == "object"
    if op == "rank":
        k = draw(st.sampled_from(["0d", "flat", "extra", "col"]))
        if k == "0d":
            return np.asarray(arr.ravel()[0]), f"{name} 0-D", False
        if k == "flat":
            return arr.ravel(), f"{name} flattened", False
        if k == "extra":
            return arr[..., None], f"{name} extra axis", False
        return arr.reshape(n, -1)[:, :1].repeat(2, axis=1), f"{name} two columns", False
    if op == "length":
        k = draw(st.sampled_from([-1, 1, -n, 5]))
        out = arr[: n + k] if k < 0 else np.concatenate([arr, arr[-1:].repeat(k, axis=0)])
        return out, f"{name} length {len(out)} (was {n})", False
    if op == "fortran":
        return np.asfortranarray(arr), f"{name} Fortran order", False
    if op == "shuffle":
        perm = draw(st.permutations(range(n)))
        return arr[list(perm)], f"{name} rows shuffled", False
    if op == "nonfinite":
        v = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        j = draw(st.integers(0, arr.shape[1] - 1))
        arr[i, j] = v
        return arr, f"vectors[{i},{j}] = {v}", False
    if op == "row":
        v = draw(st.sampled_from([0.0, 1e38, -1e38, 1e-45, 3.0]))
        arr[i] = v
        return arr, f"vectors[{i}] all {v}", False
    if op == "width":
        w = draw(st.sampled_from([1, arr.shape[1] - 1, arr.shape[1] + 1]))
        out = np.zeros((n, w), dtype=arr.dtype)
        k = min(w, arr.shape[1])
        out[:, :k] = arr[:, :k]
        return out, f"vectors width {w}", False
    if op == "set":
        with np.errstate(all="ignore"):
            v = draw(st.sampled_from([-1, 0, 1, 2, 3, 127, -128, 10**6, 2**40]))
            arr[i] = np.asarray(v).astype(arr.dtype)
        return arr, f"{name}[{i}] = {v}", False
    if op == "add":
        v = draw(st.sampled_from([1, -1, 10**6, 10**12]))
        with np.errstate(all="ignore"):
            return (arr + np.asarray(v).astype(arr.dtype)).astype(arr.dtype), f"{name} + {v}", False
    if op == "merge":  # two neighbouring articles get one id: positions restart inside one article
        nxt = np.flatnonzero(arr[1:] != arr[:-1])
        if len(nxt):
            j = int(nxt[draw(st.integers(0, len(nxt) - 1))]) + 1
            arr[arr == arr[j]] = arr[j - 1]
            return arr, f"article {arr[j]} merged into its predecessor", False
        return arr, "article_id unchanged", False
    if op == "fraction":
        return arr + 0.5, "article ids + 0.5", False
    if op == "rename":  # any distinct ids, one block each: valid for the schema, not 0..A-1
        ids = np.unique(arr)
        new = draw(st.sampled_from(["reverse", "sparse", "huge"]))
        repl = {"reverse": ids[::-1], "sparse": ids * 7 + 3, "huge": ids + 2**40}[new]
        return repl[np.searchsorted(ids, arr)], f"article ids renamed ({new})", False
    if op == "shift":
        k = draw(st.sampled_from(["all+1", "one+1", "all-1"]))
        if k == "all+1":
            return arr + 1, "positions shifted by one", False
        if k == "all-1":
            return arr - 1, "positions shifted by minus one", False
        arr[i] += 1
        return arr, f"position[{i}] + 1", False
    if op == "code":
        v = draw(st.sampled_from([-1, 3, 4, 100, 127]))
        arr[i] = v
        return arr, f"split[{i}] = {v}", False
    return arr, f"{name} unchanged", False


def load_base_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {k: np.load(folder / f"{k}.npy") for k in DATASET_ARRAYS}


@st.composite
def dataset_array_mutation(draw, base: dict[str, np.ndarray]) -> Mutation:  # noqa: C901 - a branch per kind of damage
    """1-2 changed arrays, or a damaged/missing .npy file."""
    n, dim = base["vectors"].shape
    arrays = {k: v.copy() for k, v in base.items()}
    writes, labels = {}, []
    raw = None
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(DATASET_ARRAYS))
        kind = draw(st.sampled_from(["edit", "edit", "edit", "bytes", "missing", "dir", "pickle"]))
        if kind == "edit":
            arr, label, pickled = draw(array_edit(name, arrays[name]))
            arrays[name] = arr
            writes[name] = (arr, pickled)
            labels.append(label)
        else:
            raw = (name, kind)
            break
    if raw is None:
        valid = all(
            isinstance(arrays[k], np.ndarray) and arrays[k].dtype != object and arrays[k].dtype.kind not in "USVM"
            for k in DATASET_ARRAYS
        ) and arrays_valid(arrays["vectors"], arrays["article_id"], arrays["position"], arrays["split"], n, dim)

        def apply(folder: Path) -> None:
            for k, (arr, pickled) in writes.items():
                _save(folder / f"{k}.npy", arr, allow_pickle=pickled)

        return Mutation("; ".join(labels), apply, EITHER if valid else REFUSE)

    name, kind = raw
    if kind == "bytes":
        buf = io.BytesIO()
        np.save(buf, base[name])
        data, label = draw(corrupt_bytes(buf.getvalue()))
        try:  # what numpy makes of the bytes decides the oracle
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            ok = isinstance(arr, np.ndarray)
            arrays[name] = arr
            valid = ok and arrays_valid(
                arrays["vectors"], arrays["article_id"], arrays["position"], arrays["split"], n, dim
            )
        except Exception:
            valid = False

        def apply(folder: Path) -> None:
            (folder / f"{name}.npy").write_bytes(data)
            for k, (arr, pickled) in writes.items():
                if k != name:
                    _save(folder / f"{k}.npy", arr, allow_pickle=pickled)

        return Mutation("; ".join([*labels, f"{name}.npy {label}"]), apply, EITHER if valid else REFUSE)

    def apply_missing(folder: Path) -> None:
        for k, (arr, pickled) in writes.items():
            _save(folder / f"{k}.npy", arr, allow_pickle=pickled)
        p = folder / f"{name}.npy"
        p.unlink()
        if kind == "dir":
            p.mkdir()
        elif kind == "pickle":
            _save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)

    return Mutation("; ".join([*labels, f"{name}.npy {kind}"]), apply_missing, REFUSE)


META_FOCUS = ("format_version", "dim", "counts", "content_hash", "encoder", "gate_profile", "corpus", "split_policy")


@st.composite
def dataset_meta_mutation(draw, meta: dict, n: int, dim: int) -> Mutation:
    data, paths, label = draw(json_text_mutation(meta, META_FOCUS))
    doc = parses_as_json_object(data)
    valid = doc is not None and meta_valid(doc, n, dim)
    if doc is not None and valid and "format_version" in doc and doc["format_version"] is True:
        valid = False

    def apply(folder: Path) -> None:
        (folder / "meta.json").write_bytes(data)

    return Mutation(f"meta.json: {label}", apply, EITHER if valid else REFUSE)


HASHED_SIDE_FILES = ("texts.jsonl", "articles.jsonl")  # under the content hash: any change must be refused


@st.composite
def dataset_file_mutation(draw, folder_files: dict[str, bytes]) -> Mutation:
    """A side file (texts, articles, index, probes, marker) damaged, retyped or missing. The texts and the
    article table are under the content hash: a changed or missing one must be refused; for the others
    (derived or optional) any outcome but a crash is fine."""
    name = draw(st.sampled_from(sorted(folder_files)))
    data = folder_files[name]
    kind = draw(
        st.sampled_from(
            ["bytes", "missing", "dir", "lines"] if name.endswith(".jsonl") else ["bytes", "missing", "dir"]
        )
    )
    if kind == "lines":
        lines = data.decode().splitlines()
        op = draw(st.sampled_from(["drop", "junk", "extra", "retype-field"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "junk":
            lines[i] = draw(st.sampled_from(["{", "null", "[]", "1", '"x"', "{}", '{"title": null}', "\x00"]))
        elif op == "extra":
            lines.insert(i, dumps(draw(junk)))
        else:
            rec = json.loads(lines[i])
            if isinstance(rec, dict) and rec:
                key = draw(st.sampled_from(sorted(rec)))
                rec[key] = draw(junk)
                lines[i] = dumps(rec)
            else:
                lines[i] = dumps(draw(junk))
        new = ("\n".join(lines) + "\n").encode()
        label = f"{name}: line {i + 1} {op}"
    elif kind == "bytes":
        new, label = draw(corrupt_bytes(data))
        label = f"{name} {label}"
    else:
        new, label = None, f"{name} {kind}"

    def apply(folder: Path) -> None:
        p = folder / name
        p.unlink(missing_ok=True)
        if kind == "dir":
            p.mkdir()
        elif new is not None:
            p.write_bytes(new)

    changed = kind in ("missing", "dir") or new != data
    return Mutation(label, apply, REFUSE if name in HASHED_SIDE_FILES and changed else EITHER)


# ----------------------------------------------------------------------------- checkpoints


def read_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def write_safetensors(header: dict, body: bytes) -> bytes:
    h = json.dumps(header, allow_nan=True).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def _tensor_names(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


@st.composite
def safetensors_mutation(draw, data: bytes) -> tuple[bytes, str, str]:
    """(new bytes, label, expect) for a weights file; ``expect`` assumes the SHA-256 in the card is updated."""
    header, body = read_safetensors(data)
    names = _tensor_names(header)
    name = draw(st.sampled_from(names))
    entry = header[name]
    op = draw(
        st.sampled_from(
            ["values", "values", "dtype-lie", "shape-lie", "offsets-lie", "drop", "extra", "metadata", "bytes"]
            + ["hlen", "resave"]
        )
    )
    if op == "values":
        v = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        start, stop = entry["data_offsets"]
        arr = np.frombuffer(body[start:stop], dtype="<f4").copy()
        if not len(arr):
            return data, f"{name} is empty", EITHER
        arr[draw(st.integers(0, len(arr) - 1))] = v
        body = body[:start] + arr.tobytes() + body[stop:]
        return write_safetensors(header, body), f"{name} holds {v}", REFUSE
    if op == "dtype-lie":
        dt = draw(st.sampled_from(["I32", "U32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "I8", "F8_E4M3", "XX", 7]))
        entry["dtype"] = dt
        return write_safetensors(header, body), f"{name} header says {dt}", REFUSE
    if op == "shape-lie":
        shape = draw(
            st.sampled_from([[], [0], [1], [10**9], [-1], [2**62, 2], ["8"], None, [int(np.prod(entry["shape"]))]])
        )
        same = shape is not None and shape == [int(np.prod(entry["shape"]))] and len(entry["shape"]) == 1
        entry["shape"] = shape
        return write_safetensors(header, body), f"{name} header shape {shape}", EITHER if same else REFUSE
    if op == "offsets-lie":
        start, stop = entry["data_offsets"]
        new = draw(
            st.sampled_from([[start, stop + 4], [start + 4, stop], [0, 0], [stop, start], [0, 2**62], [-4, stop]])
        )
        entry["data_offsets"] = new
        return write_safetensors(header, body), f"{name} offsets {new}", REFUSE
    if op == "drop":
        del header[name]
        return write_safetensors(header, body), f"{name} dropped", REFUSE
    if op == "extra":
        header["extra.weight"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(body), len(body) + 4]}
        return write_safetensors(header, body + b"\0\0\0\0"), "extra tensor", REFUSE
    if op == "metadata":
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"a": 1}, [], None, "x", {"x": None}]))
        ok = isinstance(header["__metadata__"], dict) and all(
            isinstance(v, str) for v in header["__metadata__"].values()
        )
        return write_safetensors(header, body), f"__metadata__ = {header['__metadata__']!r}", EITHER if ok else EITHER
    if op == "hlen":
        n = draw(st.sampled_from([0, 1, 2**63 - 1, 2**40, len(data)]))
        return struct.pack("<Q", n) + data[8:], f"header length {n}", REFUSE
    if op == "resave":  # a clean file with the tensors in another dtype
        import torch
        from safetensors.torch import load, save

        state = load(data)
        dt = draw(st.sampled_from(["float16", "float64", "bfloat16", "int32", "int64", "bool"]))
        state = {k: v.to(getattr(torch, dt)) for k, v in state.items()}
        return save(state), f"weights re-saved as {dt}", EITHER if dt in ("float16", "float64", "bfloat16") else REFUSE
    new, label = draw(corrupt_bytes(data))
    sure = label.startswith(("truncated", "empty", "all zero", "JSON nested", "not UTF-8"))  # a flipped data byte
    return new, f"weights {label}", REFUSE if sure and new != data else EITHER  # is still a valid weights file


CARD_FOCUS = ("model_type", "model_config", "input_dim", "ctx", "min_ctx", "format", "version", "weights_sha256")


def card_invalid(card) -> bool:
    """Independent check of a checkpoint card's validated fields: True when it must be refused."""
    if not isinstance(card, dict) or card.get("format") != CHECKPOINT_PREFIX or card.get("version") != 1:
        return True
    if any(
        k not in card for k in ("model_type", "model_config", "input_dim", "ctx", "encoder_fingerprint", "dataset_hash")
    ):
        return True
    if not isinstance(card["model_type"], str) or card["model_type"] not in ("amn", "gru", "lstm", "transformer"):
        return True
    cfg = card["model_config"]
    if not isinstance(cfg, dict):
        return True
    for v in cfg.values():
        if isinstance(v, float) and not math.isfinite(v):
            return True
        if is_int(v) and not 0 <= v <= 65_536:
            return True
    if not is_int(card["input_dim"]) or not 1 <= card["input_dim"] <= 65_536:
        return True
    if not is_int(card["ctx"]) or not 1 <= card["ctx"] <= 4096:
        return True
    if any(k in cfg and (cfg[k] != card[k] or type(cfg[k]) is not type(card[k])) for k in ("ctx", "input_dim")):
        return True
    mc = card.get("min_ctx", 1)
    if not is_int(mc) or not 1 <= mc <= card["ctx"]:
        return True
    sha = card.get("weights_sha256")
    return sha is not None and (not isinstance(sha, str) or len(sha) != 64)


# ----------------------------------------------------------------------------- pickles that try to run code


class Payload:
    """Unpickling this runs code that creates ``marker``; nothing in lvm may ever let it."""

    def __init__(self, marker: str, how: str = "open"):
        self.marker, self.how = marker, how

    def __reduce__(self):
        m = self.marker
        if self.how == "system":
            return (os.system, (f"touch {shlex.quote(m)}",))
        if self.how == "eval":
            return (eval, (f"open({m!r}, 'w').close()",))
        if self.how == "exec":
            return (exec, (f"open({m!r}, 'w').close()",))
        return (open, (m, "w"))


PAYLOAD_HOWS = ("open", "system", "eval", "exec")


def torch_payload(path: Path, marker: str, how: str, shape: str) -> None:
    """A .pt file whose unpickling would run the payload (torch zip format, or a raw pickle)."""
    import pickle

    import torch

    evil = Payload(marker, how)
    obj = {
        "bare": evil,
        "state": {"model_state_dict": {"w": evil}},
        "args": {"model_state_dict": {"w": torch.zeros(2)}, "args": evil},
        "config": {"model_state_dict": {"w": torch.zeros(2)}, "model_config": {"d": evil}},
    }[shape if shape != "raw" else "bare"]
    if shape == "raw":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)


def npy_payload(marker: str, how: str) -> bytes:
    """A .npy member: object-array header followed by a pickle that runs the payload."""
    import pickle

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    return buf.getvalue() + pickle.dumps(Payload(marker, how), protocol=2)


def npz_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return buf.getvalue()


def npy_bytes(arr, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


# ----------------------------------------------------------------------------- .npz imports


@st.composite
def npz_mutation(draw, arrays: dict[str, np.ndarray]) -> tuple[bytes, str, str]:  # noqa: C901 - a branch per kind of damage
    """(npz bytes, label, expect) from the arrays of a valid import."""
    arrays = {k: v.copy() for k, v in arrays.items()}
    members: dict[str, bytes] = {}
    labels, expect = [], EITHER

    def put(key: str, arr: np.ndarray, pickled: bool) -> None:
        """An object array is written as a pickled member (np.savez would refuse it); any other in ``arrays``."""
        if pickled:
            members[f"{key}.npy"] = npy_bytes(arr, allow_pickle=True)
            arrays.pop(key)
        else:
            arrays[key] = arr

    if draw(st.integers(0, 5)) == 0:
        data, label = draw(corrupt_bytes(npz_bytes({f"{k}.npy": npy_bytes(v) for k, v in arrays.items()})))
        return data, f"npz {label}", EITHER
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(arrays)))
        op = draw(st.sampled_from(["drop", "rename", "edit", "edit", "edit", "junk", "metadata", "raw"]))
        if op == "drop":
            arrays.pop(key)
            labels.append(f"{key} dropped")
            if key in ("context_sequences", "target_vectors", "article_ids"):
                expect = REFUSE
        elif op == "rename":
            new = draw(st.sampled_from(["contexts", "targets", "article_indices", "positions", "texts", "x", ""]))
            arrays[new] = arrays.pop(key)
            labels.append(f"{key} renamed {new}")
        elif op == "edit":
            arr, label, pickled = draw(array_edit(key if key != "target_vectors" else "vectors", arrays[key]))
            put(key, arr, pickled)
            labels.append(f"{key}: {label}")
        elif op == "junk":
            value = draw(junk)
            try:
                arr = np.asarray(value)
            except Exception:
                arr = np.asarray(str(value))
            put(key, arr, arr.dtype == object)
            labels.append(f"{key} = {short(value)}")
        elif op == "metadata":
            t = arrays.get("target_vectors")
            n = len(t) if isinstance(t, np.ndarray) and t.ndim else 1
            rows = draw(
                st.sampled_from(
                    [
                        [{"article_index": i % 3, "target_chunk_index": i} for i in range(n)],
                        [{"article_index": "x"}] * n,
                        [{"title": None}] * n,
                        [None] * n,
                        [1] * n,
                        [{"article_index": [1]}] * n,
                    ]
                )
            )
            members["metadata.npy"] = npy_bytes(np.array(rows, dtype=object), allow_pickle=True)
            labels.append(f"metadata {short(rows[:1])}")
        else:
            members[f"{key}.npy"] = draw(st.sampled_from([b"", b"\x93NUMPY", b"not npy", npy_bytes(np.zeros(2))[:20]]))
            arrays.pop(key)
            labels.append(f"{key}.npy raw junk")
    for k, v in arrays.items():
        if f"{k}.npy" not in members:
            members[f"{k}.npy"] = npy_bytes(v)
    t = arrays.get("target_vectors")
    c = arrays.get("context_sequences")
    for a in (t, c):
        if isinstance(a, np.ndarray) and a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
            expect = REFUSE
    return npz_bytes(members), "; ".join(labels), expect


# ----------------------------------------------------------------------------- corpora


corpus_record = st.one_of(
    st.fixed_dictionaries(
        {"id": st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.integers(), max_size=2))},
        optional={
            "title": junk,
            "topic": junk,
            "text": st.one_of(st.text(max_size=300), junk),
            "chunks": st.one_of(st.lists(st.text(max_size=40), max_size=5), junk),
        },
    ),
    junk,
)


@st.composite
def jsonl_corpus(draw) -> tuple[bytes, str]:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["record", "record", "record", "blank", "broken", "bytes"]))
        if kind == "record":
            lines.append(dumps(draw(corpus_record)).encode())
        elif kind == "blank":
            lines.append(b"   ")
        elif kind == "broken":
            lines.append(draw(st.sampled_from([b"{", b'{"id": 1, "text": "a"', b"\xff\xfe", b"\x00", b"[1,2"])))
        else:
            lines.append(draw(st.binary(max_size=30)).replace(b"\n", b" "))
    return b"\n".join(lines) + (b"\n" if draw(st.booleans()) else b""), f"{len(lines)} lines"


@st.composite
def text_folder(draw) -> dict[str, bytes]:
    files = {}
    for i in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([f"a{i}.txt", f"sub/b{i}.txt", f"c{i}.md", f"deep/x/y/d{i}.txt", f" {i}.txt"]))
        files[name] = draw(
            st.one_of(
                st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
                st.binary(max_size=50),
                st.just(b""),
            )
        )
    return files


# ----------------------------------------------------------------------------- gate profiles (TOML)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"
        )
    return '"<none>"' if v is None else json.dumps(str(v))


def to_toml(doc: dict) -> str:
    """A TOML document with every top-level key as a key = inline value (None has no TOML form:
    written as the string "<none>")."""
    return "".join(f"{json.dumps(str(k), ensure_ascii=False)} = {toml_value(v)}\n" for k, v in doc.items())


PROFILE_FOCUS = ("profile", "gates", "training")


@st.composite
def profile_mutation(draw, doc: dict, text: str) -> tuple[bytes, str]:
    if draw(st.integers(0, 4)) == 0:
        data, label = draw(corrupt_bytes(text.encode()))
        return data, f"profile text {label}"
    doc = json.loads(json.dumps(doc))
    labels = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 5)) == 0:
            ext = draw(st.sampled_from(["self", "minilm-wiki-vital", "gtr-t5-wiki", "nope", "", "../x.toml"]))
            if isinstance(doc, dict) and isinstance(doc.setdefault("profile", {}), dict):
                doc["profile"]["extends"] = ext
            labels.append(f"extends {ext}")
            continue
        doc, _, label = draw(json_edit(doc, PROFILE_FOCUS))
        labels.append(label)
    if not isinstance(doc, dict):
        doc = {"x": doc}
    return to_toml(doc).encode("utf-8", "surrogatepass"), "; ".join(labels)


# ----------------------------------------------------------------------------- command-line options

INT_OPTIONS = {  # option: (smallest valid, largest valid)
    "--epochs": (1, 3),
    "--batch-size": (1, 1 << 24),
    "--eval-batch-size": (1, 1 << 24),
    "--ctx": (1, 4096),
    "--min-ctx": (1, 4096),
    "--max-per-article": (0, 10**40),  # any cap above the batch size means none
    "--threads": (1, 4096),
    "--seed": (0, 2**63 - 1),
}
FLOAT_OPTIONS = {  # option: (low, high, low inclusive, high inclusive)
    "--lr": (0, math.inf, False, False),
    "--weight-decay": (0, math.inf, True, False),
    "--warmup-frac": (0, 1, True, True),
    "--min-lr-ratio": (0, 1, True, True),
    "--grad-clip": (0, math.inf, True, False),
    "--ema-decay": (0, 1, True, False),
    "--warm-start-lr-scale": (0, math.inf, False, False),
    "--lambda-mse": (0, math.inf, True, False),
    "--lambda-cos": (0, math.inf, True, False),
    "--lambda-info": (0, math.inf, True, False),
    "--tau": (1e-4, 100, True, True),
    "--adaptive-decay": (0, 1, True, True),
    "--variance-floor-ratio": (0, math.inf, True, False),
}
INT_VALUES = [-(2**63), -1, 0, 1, 2, 3, 7, 4096, 4097, 10**9, 2**63, 10**30]
FLOAT_VALUES = [-1.0, -0.0, 0.0, 1e-12, 0.01, 0.5, 1.0, 1.5, 1e30, math.nan, math.inf, -math.inf]
MODEL_CONFIG_KEYS = ["d_model", "hidden_dim", "dropout", "n_layers", "n_heads", "mlp_ratio", "ctx", "input_dim", "x"]


def _in_range(v: float, lo, hi, lo_inc, hi_inc) -> bool:
    if not math.isfinite(v):
        return False
    return (v >= lo if lo_inc else v > lo) and (v <= hi if hi_inc else v < hi)


@st.composite
def train_options(draw, ctx: int = 5) -> tuple[list[str], str, str]:
    """1-3 ``lvm train`` options with odd values: (argv tail, label, expect)."""
    argv, labels, bad = [], [], {}  # option -> its last value is invalid (the last one given wins)
    values = {"--ctx": ctx, "--min-ctx": 1}
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["int", "int", "float", "float", "float", "device", "model-config", "text"]))
        if kind == "int":
            opt = draw(st.sampled_from(sorted(INT_OPTIONS)))
            v = draw(st.one_of(st.sampled_from(INT_VALUES), st.integers(-5, 10)))
            lo, hi = INT_OPTIONS[opt]
            if opt == "--epochs" and v > 3:  # keep the fuzz fast: more epochs are valid but slow
                v = 3
            if opt in ("--batch-size", "--eval-batch-size") and 0 < v < 8:
                v = 8  # valid, but a batch of one is slow over many examples
            if opt == "--threads" and v > 2:
                v = 2  # valid, but thousands of threads would only slow the run down
            if opt == "--ctx" and 64 < v <= hi:
                v = 64  # valid, but contexts of thousands of padding slots only slow the fuzz down
            bad[opt] = not lo <= v <= hi
            values[opt] = v
            argv += [opt, str(v)]
        elif kind == "float":
            opt = draw(st.sampled_from(sorted(FLOAT_OPTIONS)))
            v = draw(st.one_of(st.sampled_from(FLOAT_VALUES), st.floats(-2, 2)))
            bad[opt] = not _in_range(v, *FLOAT_OPTIONS[opt])
            argv += [opt, repr(v)]
        elif kind == "device":
            v = draw(st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "gpu", "", "meta", "cpu:0", "cuda:x", "mps"]))
            opt = "--device"
            bad[opt] = v not in ("cpu", "auto", "cuda", "cuda:7")
            argv += [opt, v]
        elif kind == "model-config":
            cfg = draw(
                st.one_of(
                    st.dictionaries(
                        st.sampled_from(MODEL_CONFIG_KEYS),
                        st.one_of(st.sampled_from([-1, 0, 1, 2, 4, 8, 0.5, 1.0, 2.0, None, "8", True]), junk),
                        max_size=3,
                    ),
                    junk,
                )
            )
            text = dumps(cfg)
            bad["--model-config"] = not isinstance(cfg, dict)
            argv += ["--model-config", text]
            v = text
            opt = "--model-config"
        else:
            opt = draw(st.sampled_from(["--epochs", "--lr", "--ctx", "--model", "--seed"]))
            v = draw(st.sampled_from(["", "x", "0x10", "--", "1.5e", "nan", "[]"]))
            bad[opt] = True  # not a number (nan: not a learning rate), not a model type
            argv += [f"{opt}={v}"]
        labels.append(f"{opt} {v}")
    ctx_ok = not bad.get("--ctx") and not bad.get("--min-ctx")
    invalid = any(bad.values()) or (ctx_ok and not 1 <= values["--min-ctx"] <= values["--ctx"])
    return argv, "; ".join(labels), REFUSE if invalid else EITHER


# ----------------------------------------------------------------------------- extreme numbers (any JSON, any TOML)

# Values that stand where a number goes: the largest finite doubles, non-finite numbers, integers past any
# machine width, negative zero, the smallest subnormal, and things that are not numbers at all.
EXTREME_VALUES = [1e308, -1e308, math.nan, math.inf, -math.inf, 10**400, -(10**400), -0.0, 5e-324, 2**63, 2**64]
EXTREME_VALUES += [-(2**63) - 1, True, False, "1.0", "NaN", "1e400", "", None, [], {}]
# JSON number tokens written as such (Python's json reads 1e999 as inf and refuses > 4300-digit integers)
RAW_NUMBERS = ["1e999", "-1e999", "1" + "0" * 400, "-1" + "0" * 400, "1" + "0" * 5000, "NaN", "Infinity"]
RAW_NUMBERS += ["-Infinity", "-0", "-0.0", "1e-400", "1.7976931348623157e+308", "0." + "0" * 400 + "1"]
_RAW = "@@lvm-fuzz-raw@@"
UNPARSEABLE = object()  # what Python's json makes of a document it refuses


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def finite_number(v) -> bool:
    """A JSON number that is a finite double (10**400 is a number but no double)."""
    if not is_number(v):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def parse_json(data: bytes):
    """What Python's json makes of ``data`` (NaN/Infinity accepted), or ``UNPARSEABLE``."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return UNPARSEABLE


def numeric_paths(doc) -> list[tuple]:
    return [p for p in json_paths(doc, max_depth=9, max_items=8) if p and is_number(get_path(doc, p))]


@st.composite
def extreme_value(draw) -> tuple[object, str | None]:
    """(the value as Python reads it, the raw JSON token written instead of it, or None)."""
    if draw(st.integers(0, 3)) == 0:
        tok = draw(st.sampled_from(RAW_NUMBERS))
        return parse_json(tok.encode()), tok
    return draw(st.sampled_from(EXTREME_VALUES)), None


@st.composite
def extreme_edit(draw, doc, focus: tuple = (), paths: list | None = None) -> tuple[bytes, tuple, object, str]:
    """One number of ``doc`` (now and then any value) replaced by an extreme one, written as JSON:
    (bytes, path, the old value, label). ``focus``: top-level keys drawn more often; ``paths``: the
    values that matter most (drawn half of the time when given)."""
    doc = json.loads(json.dumps(doc))
    nums = numeric_paths(doc)
    focused = [p for p in nums if p[0] in focus]
    pool = focused if focused and draw(st.booleans()) else nums
    if paths and draw(st.booleans()):
        pool = paths
    if not pool or draw(st.integers(0, 5)) == 0:
        pool = [p for p in json_paths(doc) if p] or [()]
    path = draw(st.sampled_from(pool))
    old = get_path(doc, path)
    value, raw = draw(extreme_value())
    doc = set_path(doc, path, _RAW if raw is not None else value)
    text = dumps(doc)
    if raw is not None:
        text = text.replace(json.dumps(_RAW), raw)
    shown = f"{raw[:24]}{'...' if len(raw) > 24 else ''} (a {len(raw)}-character JSON number)" if raw else short(value)
    return text.encode(), path, old, f"{'/'.join(map(str, path)) or '(root)'} = {shown} (was {short(old)})"


@st.composite
def extreme_toml(draw, doc: dict) -> tuple[bytes, tuple, object, object, str]:
    """A TOML document with one number (now and then any value) replaced by an extreme one:
    (bytes, path, old, new, label). TOML has nan/inf but no null (None is not drawn)."""
    doc = json.loads(json.dumps(doc))
    nums = numeric_paths(doc)
    pool = nums if nums and draw(st.integers(0, 4)) else [p for p in json_paths(doc) if p]
    path = draw(st.sampled_from(pool))
    old = get_path(doc, path)
    value = draw(st.sampled_from([v for v in EXTREME_VALUES if v is not None] + [-5, -1, 0, 1.5]))
    set_path(doc, path, value)
    return to_toml(doc).encode(), path, old, value, f"{'/'.join(map(str, path))} = {short(value)} (was {short(old)})"


def number_broken(old, new) -> bool:
    """A number of a settings file replaced by something that is not a usable number of its kind: not a
    number (a string, a bool, null, a list), not a finite double (NaN, ±inf, 10**400: no JSON reader but
    Python's reads it back), or a fraction where an integer was."""
    if not is_number(old):
        return False
    if not finite_number(new):
        return True
    return isinstance(old, int) and isinstance(new, float) and not float(new).is_integer()


# ----------------------------------------------------------------------------- deep nesting (any JSON reader)

DEEP_DEPTHS = (10_000, 50_000, 100_000)


def deep_text(depth: int, kind: str) -> str:
    if kind == "object":
        return '{"a":' * depth + "0" + "}" * depth
    if kind == "mixed":
        return '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2)
    if kind == "unclosed":
        return "[" * depth
    return "[" * depth + "]" * depth


@st.composite
def deep_edit(draw, doc) -> tuple[bytes, tuple, str]:
    """``doc`` as JSON with one value (or the whole document) replaced by arrays/objects nested
    10k-100k deep: (bytes, path, label). Python's json cannot read any of them (RecursionError)."""
    depth = draw(st.sampled_from(DEEP_DEPTHS))
    kind = draw(st.sampled_from(["array", "object", "mixed", "unclosed"]))
    blob = deep_text(depth, kind)
    paths = [p for p in json_paths(doc) if p]
    if not paths or draw(st.integers(0, 2)) == 0:
        return blob.encode(), (), f"whole document: {kind} nested {depth} deep"
    path = draw(st.sampled_from(paths))
    doc = set_path(json.loads(json.dumps(doc)), path, _RAW)
    text = dumps(doc).replace(json.dumps(_RAW), blob)
    return text.encode(), path, f"{'/'.join(map(str, path))} = {kind} nested {depth} deep"


@st.composite
def deep_toml(draw, text: str) -> tuple[bytes, str]:
    """A TOML profile with a key whose value is an array or inline table nested 10k-100k deep."""
    depth = draw(st.sampled_from(DEEP_DEPTHS))
    kind = draw(st.sampled_from(["array", "table", "unclosed"]))
    if kind == "array":
        value = "[" * depth + "1" + "]" * depth
    elif kind == "table":
        value = "{a = " * depth + "1" + "}" * depth
    else:
        value = "[" * depth
    where = draw(st.sampled_from(["top", "table"]))
    line = f"deep = {value}\n"
    data = line + text if where == "top" else text.replace("[profile]\n", "[profile]\n" + line, 1)
    return data.encode(), f"TOML {kind} nested {depth} deep ({where})"


# ----------------------------------------------------------------------------- .npy headers (parser limits)


def npy_with_header(header, body: bytes, version: bytes = b"\x01\x00", hlen: int | None = None) -> bytes:
    raw = header.encode("latin1") if isinstance(header, str) else header
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    n = len(raw) if hlen is None else hlen
    size = struct.pack("<H", min(n, 0xFFFF)) if version[0] == 1 else struct.pack("<I", n)
    return b"\x93NUMPY" + version + size + raw + body


def _npy_headers(descr: str, shape: str, marker: str, n: int) -> dict:
    q3 = "'" * 3
    start = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': "
    return {
        "unbalanced": start + "((((((",
        "deep-tuple": start + "(" * n + ")" * n + "}",
        "deep-dict": "{'descr': " + "{'a': " * n + "1" + "}" * n + "}",
        "unterminated": "{'descr': '" + descr,
        "triple-quote": "{'descr': " + q3 + descr,
        "huge-shape": start + f"({10**400},)}}",
        "digits": start + "(" + "9" * 5000 + ",)}",
        "negative-shape": start + "(-1, 8)}",
        "float-shape": start + "(1.5,)}",
        "descr-repeat": f"{{'descr': {descr * 2000!r}, 'fortran_order': False, 'shape': {shape}}}",
        "descr-record": f"{{'descr': {[('a', '<f4')] * 3000!r}, 'fortran_order': False, 'shape': {shape}}}",
        "descr-object": f"{{'descr': '|O', 'fortran_order': False, 'shape': {shape}}}",
        "descr-void0": f"{{'descr': '|V0', 'fortran_order': False, 'shape': {shape}}}",
        "code": f"__import__('os').system('touch {marker}')",
        "code-in-shape": start + f"(open({marker!r}, 'w'),)}}",
        "fstring": "f'{1}'",
        "not-ascii": b"{'descr': '\xff\xfe', 'fortran_order': False, 'shape': (1,)}",
        "hlen-lie": start + shape + "}",
        "version": start + shape + "}",
        "fortran-junk": f"{{'descr': {descr!r}, 'fortran_order': 'yes', 'shape': {shape}}}",
        "extra-keys": start + shape + ", 'x': 1}",
    }


@st.composite
def npy_header_attack(draw, arr: np.ndarray, marker: str) -> tuple[bytes, str, bool]:
    """A .npy file of ``arr``'s data whose header is garbage: unbalanced or deeply nested brackets,
    unterminated (triple-quoted) strings, shapes of 10**400 or negative, odd descr, code that must never
    run (it would create ``marker``), lengths and versions that lie: (bytes, label, whether it is in fact
    a valid .npy of ``arr``: format versions 2.0 and 3.0 are)."""
    descr = np.lib.format.dtype_to_descr(arr.dtype)
    body = np.ascontiguousarray(arr).tobytes()
    headers = _npy_headers(descr, repr(tuple(arr.shape)), marker, draw(st.sampled_from([1_000, 100_000])))
    kind = draw(st.sampled_from(sorted(headers)))
    header = headers[kind]
    if kind == "hlen-lie":
        hlen = draw(st.sampled_from([0, 1, 0xFFFF]))
        return npy_with_header(header, body, hlen=hlen), f".npy header length {hlen} (a lie)", False
    if kind == "version":
        v = draw(st.sampled_from([b"\x02\x00", b"\x03\x00", b"\x09\x09", b"\x00\x00"]))
        return npy_with_header(header, body, version=v), f".npy version {v!r}", v in (b"\x02\x00", b"\x03\x00")
    version = b"\x02\x00" if len(header) > 60_000 else b"\x01\x00"
    return npy_with_header(header, body, version=version), f".npy header {kind}", False


# ----------------------------------------------------------------------------- numeric command-line flags


def flag_bound(action, cmd: str):
    """(kind, lo, hi, lo_open, hi_open, where declared) of a numeric option: from ``lvm.bounds.number``
    (``type.bound``), else, for ``lvm train``, from the pydantic schema its config is validated with;
    None when the option is not numeric."""
    t = action.type
    b = getattr(t, "bound", None)
    if b is not None:
        return b.kind, b.lo, b.hi, b.lo_open, False, "lvm.bounds"
    if t not in (int, float):
        return None
    if cmd == "train":
        got = _schema_bound(action.dest)
        if got is not None:
            return (t, *got, "schema")
    return t, None, None, False, False, "undeclared"


def _schema_bound(dest: str):
    import typing

    from lvm import schemas

    for model in (schemas.TrainSettings, schemas.LossSettings):
        f = model.model_fields.get(dest)
        if f is None:
            continue
        meta = list(f.metadata)
        for arg in typing.get_args(f.annotation):
            for m in getattr(arg, "__metadata__", ()):
                meta += list(getattr(m, "metadata", [m]))
        lo = hi = None
        lo_open = hi_open = False
        for m in meta:
            if getattr(m, "ge", None) is not None:
                lo = m.ge
            if getattr(m, "gt", None) is not None:
                lo, lo_open = m.gt, True
            if getattr(m, "le", None) is not None:
                hi = m.le
            if getattr(m, "lt", None) is not None:
                hi, hi_open = m.lt, True
        return lo, hi, lo_open, hi_open
    return None


# Independent of what the CLI declares: what a value of these options must be to make sense at all.
SEMANTIC_BOUNDS = {  # option: (lo, hi, lo_open, hi_open); None = no limit on that side
    "--batch-size": (1, None, False, False),
    "--eval-batch-size": (1, None, False, False),
    "--max-length": (1, None, False, False),
    "--min-chars": (0, None, False, False),
    "--target-chars": (1, None, False, False),
    "--nlist": (1, None, False, False),
    "--nprobe": (1, None, False, False),
    "--ctx": (1, None, False, False),
    "--min-ctx": (1, None, False, False),
    "--input-dim": (1, None, False, False),
    "--dim": (1, None, False, False),
    "--n-chunks": (1, None, False, False),
    "--epochs": (1, None, False, False),
    "--segment-width": (1, None, False, False),
    "--threads": (1, None, False, False),
    "--latency-threads": (1, 4096, False, False),
    "--seed": (0, None, False, False),
    "--seeds": (0, None, False, False),
    "--chunks-per-article": (1, None, False, False),
    "--ood-fraction": (0, 1, False, True),
    "--val-fraction": (0, 1, False, True),
    "--duplicates": (0, 1, False, True),
    "--coherence": (-1, 1, False, False),
    "--coherence-std": (0, None, False, False),
    "--min-coherence": (-1, 1, False, False),
    "--lr": (0, None, True, False),
    "--tau": (1e-4, 100, False, False),
    "--warm-start-lr-scale": (0, None, True, False),
    "--warmup-frac": (0, 1, False, False),
    "--min-lr-ratio": (0, 1, False, False),
    "--ema-decay": (0, 1, False, True),
    "--adaptive-decay": (0, 1, False, False),
    "--weight-decay": (0, None, False, False),
    "--grad-clip": (0, None, False, False),
    "--max-per-article": (0, None, False, False),
    "--variance-floor-ratio": (0, None, False, False),
    "--lambda-mse": (0, None, False, False),
    "--lambda-cos": (0, None, False, False),
    "--lambda-info": (0, None, False, False),
    "--lambda-moment": (0, None, False, False),
    "--lambda-variance": (0, None, False, False),
    "--adaptive-base": (0, None, False, False),
    "--adaptive-min": (0, None, False, False),
    "--adaptive-max": (0, None, False, False),
}


def _within(v: float, lo, hi, lo_open, hi_open) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def flag_value_ok(opt: str, text: str, bound) -> bool:
    """Whether ``text`` is an acceptable value of ``opt``: a finite number of the option's kind (as
    Python reads it), inside the declared bounds and inside the semantic ones."""
    kind, lo, hi, lo_open, hi_open, _ = bound
    try:
        v = kind(text)
    except (ValueError, OverflowError):
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    if not math.isfinite(f) or not _within(v, lo, hi, lo_open, hi_open):
        return False
    sem = SEMANTIC_BOUNDS.get(opt)
    return sem is None or _within(v, *sem)


def _edges(x, kind) -> list:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return []
    if kind is int:
        return [int(x) - 1, int(x), int(x) + 1]
    x = float(x)
    return [math.nextafter(x, -math.inf), x, math.nextafter(x, math.inf), x - 1, x + 1]


FLAG_EXTREMES = ["0", "-1", "1", "-0", "nan", "inf", "-inf", "1e400", "-1e400", "1e308", "-1e308", str(10**400)]
FLAG_EXTREMES += [str(2**31), str(2**63), str(-(2**63) - 1), "1e3", "0x10", "1.5", "", " 3", "1_000", "\u0663"]
FLAG_EXTREMES += ["+2", "5e-324", "1e-400", "NaN", "Infinity", "-0.0", "2.0"]


@st.composite
def flag_value(draw, opt: str, bound) -> str:
    """A value for a numeric option: at and just beyond its declared and semantic bounds, or extreme."""
    kind, lo, hi, *_ = bound
    sem = SEMANTIC_BOUNDS.get(opt, (None, None, False, False))
    edges = _edges(lo, kind) + _edges(hi, kind) + _edges(sem[0], kind) + _edges(sem[1], kind)
    if edges and draw(st.integers(0, 2)):
        v = draw(st.sampled_from(edges))
        return str(v) if kind is int else repr(v)
    return draw(st.sampled_from(FLAG_EXTREMES))


__all__ = [
    "DATASET_ARRAYS",
    "EITHER",
    "PAYLOAD_HOWS",
    "REFUSE",
    "Mutation",
    "card_invalid",
    "corrupt_bytes",
    "dataset_array_mutation",
    "dataset_file_mutation",
    "dataset_meta_mutation",
    "json_text_mutation",
    "jsonl_corpus",
    "load_base_arrays",
    "npy_payload",
    "npz_bytes",
    "npz_mutation",
    "parses_as_json_object",
    "profile_mutation",
    "safetensors_mutation",
    "text_folder",
    "to_toml",
    "torch_payload",
    "worst",
]

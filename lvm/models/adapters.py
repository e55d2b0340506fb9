"""Model adapters: every way a model reaches the gates ends in one ``LoadedModel`` — a predictor
``x (B, T, D) float32, mask (B, T) bool -> (B, D)`` and a ``ModelCard`` that the gates, the results
file and the leaderboard read. The gates normalise nothing for a predictor: output_sanity sees its
raw output. ``--checkpoint`` accepts:

- an lvm run folder, ``NAME.json`` or ``NAME.safetensors`` (written by ``lvm train``): rebuilt from
  the registry of model types, no code from the file runs;
- a folder written by ``lvm import-checkpoint`` (or its ``model.json``): gated through its
  ``model.pt2``, no code runs;
- ``py:path/to/file.py:factory`` or ``py:package.module:factory``: the user's own code, imported and
  called explicitly (as pytest runs a conftest). **This is the only way that executes the user's
  code**; the factory (a function or a class, called with ``model_config`` and ``--model-args``)
  returns a module/callable, or ``(model, card)``, and the card may come from ``--model-card
  FILE.json`` instead;
- ``NAME.pt2`` (a ``torch.export`` program, written by ``lvm export``) with its ``NAME.json`` card
  (``--model-card`` only for a program without one): loaded as a graph of ATen ops, no Python code
  from the file runs; its batch dimension is dynamic;
- predictions only (``--predictions DIR``, see ``lvm.models.predictions``): no model to call.

Adapters by signature (``call_style``): a user's model is called ``model(x, mask)`` when its second
positional parameter is a mask (named like one, or without a default), else ``model(x)``: a
``forward(x)`` or ``forward(x, return_raw=False)`` (the seeds' models) never gets the mask in a keyword
flag, and is gated on full windows only (``accepts_mask: false``, the card's ``note`` says why). A
model that predicts at every position ((B, T, D), as the seeds' Mamba variants) is read at its last.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import io
import json
import logging
import sys
import warnings
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvm.errors import LvmError
from lvm.io import sha256_file

PY_PREFIX = "py:"
EXPORT_SUFFIX = ".pt2"
CARD_KINDS = ("lvm", "python", "export", "predictions")


@dataclass
class ModelCard:
    """What the gates know about a model, whatever its source."""

    name: str
    type: str
    ctx: int
    input_dim: int
    min_ctx: int = 1
    encoder_fingerprint: str | None = None
    n_params: int | None = None
    accepts_mask: bool = True  # False: cannot take padding; gate views use min_ctx = ctx for it
    kind: str = "lvm"  # one of CARD_KINDS: how the model reached the gates
    source: str = ""  # the path or spec it was loaded from
    source_sha256: str | None = None
    model_config: dict | None = None
    training: dict | None = None  # training config, if known
    loss_config: dict | None = None
    epoch: int | None = None
    dataset_hash: str | None = None
    history_path: str | None = None  # training_history.json beside the checkpoint, if any
    note: str | None = None  # how the adapter calls the model, when not (x, mask) -> (B, D)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def gated_min_ctx(self) -> int:
        """The min_ctx of the sequences the gates score this model on."""
        return self.min_ctx if self.accepts_mask else self.ctx

    @classmethod
    def from_dict(cls, d: Any, where: str = "model card") -> ModelCard:
        """A card from JSON-like data; one clear line on a missing field or a wrong type."""
        if not isinstance(d, dict):
            raise LvmError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        for key in ("ctx", "input_dim"):
            if key not in known:
                raise LvmError(f"{where}: missing required field {key!r} (an integer)")
        known.setdefault("name", str(d.get("name") or "model"))
        known.setdefault("type", str(d.get("type") or d.get("model_type") or "custom"))
        card = cls(**known)
        card.validate(where)
        return card

    def validate(self, where: str = "model card") -> None:
        def whole(key: str, low: int, high: int) -> None:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise LvmError(f"{where}: {key} must be an integer in [{low}, {high}]; got {v!r}")

        whole("ctx", 1, 4096)
        whole("min_ctx", 1, self.ctx if isinstance(self.ctx, int) else 4096)
        whole("input_dim", 1, 65536)
        if not isinstance(self.accepts_mask, bool):
            raise LvmError(f"{where}: accepts_mask must be true or false; got {self.accepts_mask!r}")
        if self.kind not in CARD_KINDS:
            raise LvmError(f"{where}: kind must be one of {', '.join(CARD_KINDS)}; got {self.kind!r}")
        if self.encoder_fingerprint is not None and not isinstance(self.encoder_fingerprint, str):
            raise LvmError(f"{where}: encoder_fingerprint must be a string; got {self.encoder_fingerprint!r}")
        for key in ("name", "type"):
            if not isinstance(getattr(self, key), str):
                raise LvmError(f"{where}: {key} must be a string; got {getattr(self, key)!r}")
        if self.note is not None and not isinstance(self.note, str):
            raise LvmError(f"{where}: note must be a string; got {self.note!r}")


class Predictor(nn.Module):
    """A user's module or callable behind the one contract ``(x, mask) -> (B, D)``.

    It adds nothing to the output (no normalisation, no casting beyond float32 inputs): the gates
    must see what the model emits. ``takes_mask=False``: the model is called ``fn(x)`` (it reads full
    windows; see ``call_style``). ``last_step``: the model predicts at every position (B, T, D) and
    its last position is the prediction.
    """

    def __init__(self, fn, trainable: bool = True, takes_mask: bool = True, last_step: bool = False):
        super().__init__()
        self.fn = fn  # an nn.Module is registered as a submodule, so eval()/parameters() reach it
        self.trainable = trainable  # False: a torch.export graph, which has no train/eval mode to set
        self.takes_mask = takes_mask
        self.last_step = last_step

    def train(self, mode: bool = True):
        if self.trainable:
            return super().train(mode)
        self.training = mode
        return self

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, D), (B, T) -> (B, D)
        out = self.fn(x, mask) if self.takes_mask else self.fn(x)
        return out[:, -1] if self.last_step else out


# a second positional parameter with one of these names is the mask, default or not
MASK_NAMES = frozenset(
    {"mask", "attention_mask", "attn_mask", "key_padding_mask", "src_key_padding_mask", "padding_mask", "pad_mask"}
)


def _is_mask_name(param: inspect.Parameter) -> bool:
    name = param.name.lower()
    flag = isinstance(param.default, bool)  # return_mask=False is a flag, not a mask
    return name in MASK_NAMES or (name.endswith("mask") and not flag)


def call_style(model) -> tuple[bool, str]:
    """``(takes_mask, signature)``: whether the model is called ``model(x, mask)`` or ``model(x)``.

    The second positional parameter is the mask only when it is named like one (``mask``,
    ``attention_mask``, ``key_padding_mask``, ...) or has no default; a keyword flag with a default
    (``return_raw=False``) is never fed the mask. ``*args`` and signatures that cannot be read keep
    the ``(x, mask)`` contract."""
    fn = model.forward if isinstance(model, nn.Module) else model
    label = f"{type(model).__name__}.forward" if isinstance(model, nn.Module) else getattr(model, "__name__", "model")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True, f"{label}(...)"
    params = list(sig.parameters.values())
    shown = f"{label}({_plain_signature(params)})"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) >= 2:
        second = positional[1]
        return _is_mask_name(second) or second.default is inspect.Parameter.empty, shown
    return var_positional or not positional, shown


def _plain_signature(params: list[inspect.Parameter]) -> str:
    """``x, return_raw=False``: names and defaults, without annotations."""
    out = []
    for p in params:
        star = "*" if p.kind == p.VAR_POSITIONAL else "**" if p.kind == p.VAR_KEYWORD else ""
        out.append(f"{star}{p.name}" + ("" if p.default is inspect.Parameter.empty else f"={p.default!r}"))
    return ", ".join(out)


def _probe_last_step(predictor: Predictor, ctx: int, dim: int) -> bool:
    """True when the model returns a prediction per position (B, T, D): one call on a random batch.
    A model that fails here is left to the gates, which report it."""
    x = torch.randn(2, ctx, dim, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, ctx, dtype=torch.bool)
    try:
        with torch.no_grad():
            out = predictor(x, mask)
    except Exception:  # noqa: BLE001 - the user's code: the gates call it again and say what failed
        return False
    return isinstance(out, torch.Tensor) and out.dim() == 3 and tuple(out.shape[:2]) == (2, ctx)


def adapt(model, ctx: int, dim: int) -> tuple[Predictor, dict]:
    """The user's model behind ``(x, mask) -> (B, D)`` by its signature (``call_style``), and the card
    fields that say how: ``accepts_mask: false`` for a model that takes no mask, and a ``note``."""
    takes_mask, shown = call_style(model)
    predictor = Predictor(model, takes_mask=takes_mask)
    if isinstance(model, nn.Module):
        model.eval()
    predictor.last_step = _probe_last_step(predictor, ctx, dim)
    notes: list[str] = []
    fields: dict[str, Any] = {}
    if not takes_mask:
        notes.append(f"{shown} takes no mask: called as model(x) and gated on full windows only (min_ctx = ctx)")
        fields["accepts_mask"] = False
    if predictor.last_step:
        notes.append("it returns a prediction per position (B, T, D): its last position is the prediction")
    if notes:
        fields["note"] = "; ".join(notes)
    return predictor, fields


@dataclass
class LoadedModel:
    """A predictor (None for predictions-only) and its card; ``predictions`` maps split -> (N, D)."""

    card: ModelCard
    predictor: nn.Module | None = None
    predictions: dict = field(default_factory=dict)

    @property
    def callable(self) -> bool:
        return self.predictor is not None


def count_params(model) -> int | None:
    return sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None


def read_card_file(path: str | Path) -> dict:
    from lvm.schemas import read_json_object

    return read_json_object(Path(path), "a JSON model card")


# ----------------------------------------------------------------------------- py: factories (user code)


def _import_factory(spec: str):
    """``py:path/to/file.py:factory`` or ``py:package.module:factory`` -> (the factory, its source file)."""
    body = spec[len(PY_PREFIX) :]
    target, sep, attr = body.rpartition(":")
    if not sep or not target or not attr:
        raise LvmError(f"{spec}: expected py:path/to/file.py:factory or py:package.module:factory")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise LvmError(f"{spec}: file {target} not found")
        mod_name = f"lvm_user_model_{abs(hash(str(path)))}"
        mod_spec = importlib.util.spec_from_file_location(mod_name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise LvmError(f"{spec}: cannot import {target}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.parent))  # the user's file may import its neighbours
        try:
            mod_spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        source = path
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise LvmError(f"{spec}: cannot import module {target} ({exc})") from None
        source = Path(module.__file__) if getattr(module, "__file__", None) else None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LvmError(f"{spec}: {target} has no callable {attr!r}")
    return factory, source


def _split_factory_result(out, spec: str):
    """A factory returns a model, ``(model, card)`` or ``{"model": ..., "card": ...}``."""
    if isinstance(out, dict) and "model" in out:
        return out["model"], out.get("card")
    if isinstance(out, tuple) and len(out) == 2:
        return out
    if callable(out):
        return out, None
    raise LvmError(
        f"{spec}: the factory must return a model (a callable), (model, card) or {{'model', 'card'}}; "
        f"got {type(out).__name__}"
    )


def parse_model_args(items: list[str] | tuple[str, ...] | None) -> dict:
    """``--model-args k=v ...`` -> keyword arguments for a factory or class; each value is read as
    JSON (``3``, ``0.1``, ``true``, ``null``, ``[1, 2]``, ``"text"``), else kept as a string."""
    out: dict = {}
    for item in items or ():
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise LvmError(f"--model-args {item!r}: expected KEY=VALUE with KEY a Python identifier (d_model=256)")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def check_factory_kwargs(factory, spec: str, kwargs: dict) -> None:
    """Keyword arguments the factory (a function, or a class: its constructor) does not take, and
    required ones it is not given, named in one line before it is called."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return
    name = getattr(factory, "__name__", spec.rpartition(":")[2])
    shown = f"{name}({_plain_signature(params)})"
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        takes = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = [k for k in kwargs if k not in takes]
        if unknown:
            raise LvmError(
                f"{spec}: {shown} does not take {', '.join(unknown)} (keys of model_config / --model-args); "
                "a model_config must hold the constructor's keyword arguments"
            )
    required = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if required:
        raise LvmError(
            f"{spec}: {shown} needs {', '.join(required)}, not in model_config: pass "
            + " ".join(f"--model-args {k}=VALUE" for k in required)
        )


def call_factory(factory, spec: str, kwargs: dict):
    """``(model, card data or None)`` from the user's factory or class called with ``kwargs``; one
    line naming what went wrong otherwise."""
    check_factory_kwargs(factory, spec, kwargs)
    what = "building it" if inspect.isclass(factory) else "the factory"
    given = f" with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}" if kwargs else ""
    try:
        return _split_factory_result(factory(**kwargs), spec)
    except LvmError:
        raise
    except Exception as exc:  # the user's code failed: say where, in one line
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise LvmError(f"{spec}: {what}{given} raised {type(exc).__name__}: {first}") from None


def load_python(spec: str, card_path: str | Path | None = None, model_args: dict | None = None) -> LoadedModel:
    """Import the user's code and call the factory: the one place lvm runs a user's Python.

    The factory is a function or a class, called with keyword arguments: the card's ``model_config``
    when the card names ``weights`` (as ``lvm import-checkpoint`` writes), updated with ``model_args``
    (``--model-args k=v``); then the safetensors weights are loaded into it strictly. The model is
    called by its signature (``adapt``).
    """
    file_card = read_card_file(card_path) if card_path is not None else {}
    weights = file_card.get("weights")
    config = file_card.get("model_config") or {} if weights else {}
    if not isinstance(config, dict):
        raise LvmError(f"{card_path}: model_config must be an object of constructor arguments")
    kwargs = {**config, **(model_args or {})}
    factory, source = _import_factory(spec)
    model, card_data = call_factory(factory, spec, kwargs)
    if weights:
        _load_weights(model, Path(card_path).parent / str(weights))
    data = dict(card_data or {})
    data.update(file_card)
    for key in ("format", "factory", "weights", "factory_source_sha256", "exported_from"):
        data.pop(key, None)
    if not data:
        raise LvmError(f"{spec}: no model card (return (model, card) from the factory or pass --model-card FILE.json)")
    data.setdefault("name", spec.rpartition(":")[2])
    data.setdefault("type", type(model).__name__)
    data.update(kind="python", source=spec, source_sha256=sha256_file(source) if source else None)
    if model_args:
        data["model_config"] = {**(data.get("model_config") or {}), **model_args}
    if data.get("n_params") is None:
        data["n_params"] = count_params(model)
    card = ModelCard.from_dict(data, where=f"{spec} card")
    predictor, fields = adapt(model, card.ctx, card.input_dim)
    apply_adapter_fields(card, fields)
    return LoadedModel(card, predictor)


def apply_adapter_fields(card: ModelCard, fields: dict) -> None:
    """What ``adapt`` found, on the card: a model that takes no mask never accepts one, whatever the
    card said."""
    if fields.get("accepts_mask") is False:
        card.accepts_mask = False
    if fields.get("note"):
        card.note = fields["note"]


def _load_weights(model, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lvm.models.legacy import load_strict

    if not isinstance(model, nn.Module):
        raise LvmError(
            f"{path}: the factory returned {type(model).__name__}, not a torch.nn.Module; weights cannot be loaded"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LvmError(
            f"{path}: cannot read safetensors weights ({str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from None
    load_strict(model, state, str(path))


# ----------------------------------------------------------------------------- torch.export programs


def load_export(path: str | Path, card_path: str | Path | None = None) -> LoadedModel:
    """A ``torch.export`` program: a graph of ATen ops and weights, no Python code from the file."""
    p = Path(path)
    if not p.is_file():
        raise LvmError(f"exported program {p} not found")
    own = p.with_suffix(".json")  # the program's own card wins: --model-card is for one that has none
    card_file = own if own.is_file() or not card_path else Path(card_path)
    data = read_card_file(card_file)
    data.update(kind="export", source=str(p), source_sha256=sha256_file(p))
    card = ModelCard.from_dict(data, where=str(card_file))
    try:
        program = torch.export.load(str(p))
    except Exception as exc:  # a corrupt archive surfaces as many exception types
        raise LvmError(
            f"{p}: not a torch.export program "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from None
    return LoadedModel(card, Predictor(program.module(), trainable=False))


class ExportUntraceable(LvmError):
    """``torch.export`` could not trace the model (data-dependent control flow, say): the message is
    one line, "torch.export could not trace CLASS (first line of the reason)"."""

    def __init__(self, model_class: str, reason: str):
        self.model_class, self.reason = model_class, reason
        super().__init__(f"torch.export could not trace {model_class} ({reason})")


@contextmanager
def quiet_torch():
    """torch's own logging, warnings and prints to stderr silenced (a failed trace prints its whole
    FX graph): the caller says what happened, in one line."""
    names = ["torch", *(n for n in list(logging.root.manager.loggerDict) if n.startswith("torch."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _model_class(predictor: nn.Module) -> str:
    inner = getattr(predictor, "fn", predictor)
    return type(inner).__name__ if isinstance(inner, nn.Module) else getattr(inner, "__name__", type(inner).__name__)


def trace_program(loaded: LoadedModel, batch_hint: int = 4):
    """The model as a ``torch.export`` program with a dynamic batch dimension; ``ExportUntraceable``
    (one line, nothing logged) when it cannot be traced."""
    if loaded.predictor is None:
        raise LvmError("predictions cannot be exported: there is no model")
    card = loaded.card
    x = torch.zeros(batch_hint, card.ctx, card.input_dim)
    mask = torch.ones(batch_hint, card.ctx, dtype=torch.bool)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    module = loaded.predictor.eval()
    try:
        with quiet_torch(), torch.no_grad():
            return torch.export.export(module, (x, mask), dynamic_shapes={"x": {0: batch}, "mask": {0: batch}})
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; the first line names it
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ExportUntraceable(_model_class(module), why) from None


def export_model(loaded: LoadedModel, out: str | Path, batch_hint: int = 4) -> dict:
    """Write ``out`` (.pt2, dynamic batch dimension) and its JSON card beside it; returns the card.
    ``ExportUntraceable`` when torch.export cannot trace the model (nothing is written)."""
    from lvm.io import write_atomic, write_json_atomic

    out = Path(out)
    if out.suffix != EXPORT_SUFFIX:
        raise LvmError(f"{out}: an exported program is written as NAME{EXPORT_SUFFIX}")
    card = loaded.card
    program = trace_program(loaded, batch_hint)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer; the file is then written atomically
    torch.export.save(program, buffer)
    write_atomic(out, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    exported = {
        **card.to_dict(),
        "kind": "export",
        "exported_from": card.source,
        "source": str(out),
        "source_sha256": sha256_file(out),
    }
    write_json_atomic(out.with_suffix(".json"), exported)
    return exported


# ----------------------------------------------------------------------------- lvm checkpoints


def card_from_checkpoint_meta(meta: dict) -> ModelCard:
    """The card of an lvm checkpoint (its JSON config, already checked by ``read_checkpoint_meta``)."""
    path = Path(meta["_path"])
    hist = path.parent / "training_history.json"
    cfg = meta.get("train_config") or {}
    return ModelCard(
        name=meta.get("name") or str(meta["model_type"]),  # its identity, not its folder's (issue 19)
        type=str(meta["model_type"]),
        ctx=int(meta["ctx"]),
        min_ctx=int(meta.get("min_ctx", 1)),
        input_dim=int(meta["input_dim"]),
        encoder_fingerprint=meta.get("encoder_fingerprint"),
        n_params=meta.get("n_params"),
        accepts_mask=bool(meta.get("accepts_mask", True)),
        kind="lvm",
        source=str(path),
        source_sha256=meta.get("weights_sha256"),
        model_config=meta.get("model_config"),
        training=cfg or None,
        loss_config=meta.get("loss_config") or cfg.get("loss"),
        epoch=meta.get("epoch"),
        dataset_hash=meta.get("dataset_hash"),
        history_path=str(hist) if hist.is_file() else None,
    )


def load_lvm_checkpoint(path: str | Path) -> LoadedModel:
    from lvm.models.checkpoints import load_checkpoint

    model, meta = load_checkpoint(path)
    return LoadedModel(card_from_checkpoint_meta(meta), model)


# ----------------------------------------------------------------------------- one entry point


IMPORTED_CARD = "model.json"  # what ``lvm import-checkpoint`` writes (``"format": "lvm-model-card"``)
IMPORTED_FORMAT = "lvm-model-card"


def _imported_card(spec: str) -> Path | None:
    """The card of an ``lvm import-checkpoint`` folder (or its ``model.json``), else None."""
    p = Path(spec)
    card = p / IMPORTED_CARD if p.is_dir() else p if p.suffix == ".json" else None
    if card is None or not card.is_file():
        return None
    try:
        data = json.loads(card.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        return None  # not ours: the lvm checkpoint reader says what is wrong with it
    return card if isinstance(data, dict) and data.get("format") == IMPORTED_FORMAT else None


def load_imported(card: Path) -> LoadedModel:
    """An imported checkpoint is gated through its ``model.pt2`` (no code runs); without one, only
    through its factory, which the user names explicitly."""
    program = card.with_suffix(EXPORT_SUFFIX)
    if program.is_file():
        return load_export(program, card)
    data = read_card_file(card)
    factory = data.get("factory") or "py:FILE.py:FACTORY"
    why = "torch.export could not trace it" if data.get("torch_export") else "--no-export"
    raise LvmError(
        f"{card.parent}: imported without a torch.export program ({why}); gate it eagerly with "
        f"--checkpoint={factory} --model-card={card} (runs that code)"
    )


def load_model(spec: str | Path, card_path: str | Path | None = None, model_args: dict | None = None) -> LoadedModel:
    """Whatever ``--checkpoint`` names, as a ``LoadedModel``; ``LvmError`` with one line otherwise.
    ``model_args`` (``--model-args``) reach a ``py:`` factory only: nothing else is built from code."""
    s = str(spec)
    if s.startswith(PY_PREFIX):
        return load_python(s, card_path, model_args)
    if s.endswith(EXPORT_SUFFIX):
        return load_export(s, card_path)
    imported = _imported_card(s)
    if imported is not None:
        return load_imported(imported)
    return load_lvm_checkpoint(s)


def model_label(spec: str | Path) -> str:
    """A short name for a checkpoint spec (the stoplight table's checkpoint column)."""
    s = str(spec)
    if s.startswith(PY_PREFIX):
        return (
            s.rpartition(":")[2]
            if not s[len(PY_PREFIX) :].rpartition(":")[0].endswith(".py")
            else f"{Path(s[len(PY_PREFIX) :].rpartition(':')[0]).stem}:{s.rpartition(':')[2]}"
        )
    p = Path(s)
    return p.name if p.is_dir() else f"{p.parent.name}/{p.stem}"

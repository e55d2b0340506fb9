"""LVM architectures: one module each, all ``forward(x (B, ctx, D), mask (B, ctx)) -> (B, D)`` unit.

``MODEL_TYPES`` maps a model type (the name stored in checkpoints) to its class and config
dataclass; ``build_model`` is the one way to construct a model from a config dict, and rejects
unknown types and bad keys with one clear line.
"""

from __future__ import annotations

import dataclasses
import typing

from torch import nn

from lvm.errors import LvmError
from lvm.models.amn import AMN, AMNConfig
from lvm.models.gru import GRU, GRUConfig
from lvm.models.lstm import LSTM, LSTMConfig
from lvm.models.transformer import Transformer, TransformerConfig

MODEL_TYPES: dict[str, tuple[type[nn.Module], type]] = {
    "amn": (AMN, AMNConfig),
    "gru": (GRU, GRUConfig),
    "lstm": (LSTM, LSTMConfig),
    "transformer": (Transformer, TransformerConfig),
}

__all__ = [
    "AMN", "AMNConfig", "GRU", "GRUConfig", "LSTM", "LSTMConfig", "Transformer",
    "TransformerConfig", "MODEL_TYPES", "build_model", "config_dict", "count_parameters",
]  # fmt: skip


def _coerce(model_type: str, name: str, value, annotation):
    """Check one config value against its field type (config dicts come from JSON and CLIs)."""
    expected = {int: "an integer", float: "a number", bool: "true or false"}.get(annotation)
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        return value
    if not ok:
        raise LvmError(f"{model_type} config: {name} must be {expected}; got {value!r}")
    return value


def build_model(model_type: str, config: dict) -> nn.Module:
    """Construct a model of ``model_type`` from ``config`` (field name -> value, JSON-compatible).

    Raises ``LvmError`` for an unknown type, unknown or missing keys, or invalid values.
    """
    if model_type not in MODEL_TYPES:
        raise LvmError(f"unknown model type {model_type!r}; known types: {', '.join(MODEL_TYPES)}")
    model_class, config_class = MODEL_TYPES[model_type]
    if not isinstance(config, dict):
        raise LvmError(f"{model_type} config must be a mapping of hyper-parameters; got {type(config).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise LvmError(
            f"unknown {model_type} config key(s): {', '.join(map(str, unknown))}; known keys: {', '.join(fields)}"
        )
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    missing = [n for n in required if n not in config]
    if missing:
        raise LvmError(f"{model_type} config is missing required key(s): {', '.join(missing)}")
    hints = typing.get_type_hints(config_class)
    values = {name: _coerce(model_type, name, value, hints[name]) for name, value in config.items()}
    try:
        return model_class(config_class(**values))
    except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:  # e.g. a negative width
        raise LvmError(f"{model_type} config {values}: {(str(exc).splitlines() or [''])[0][:160]}") from None


def config_dict(model: nn.Module) -> dict:
    """The model's config dataclass as a plain dict: ``build_model(type, config_dict(m))`` rebuilds it."""
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(model).__name__} has no dataclass config in .config")
    return dataclasses.asdict(config)


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters (buffers, e.g. a fitted ridge's weights, excluded)."""
    return sum(p.numel() for p in model.parameters())

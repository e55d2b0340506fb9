"""The training configuration: every hyper-parameter with its default and a one-line help.

``lvm train`` builds its options from these fields (``add_config_arguments``) and its config back
from the parsed options (``config_from_args``), so a default or a help text lives here only.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass

from lvm.errors import LvmError
from lvm.losses import LossConfig


@dataclass
class TrainConfig:
    dataset: str = field(default="data/wiki-minilm", metadata={"help": "dataset folder"})
    model: str = field(default="amn", metadata={"help": "architecture or null baseline"})
    model_config: dict = field(
        default_factory=dict,
        metadata={
            "help": """overrides of the architecture's defaults, e.g. '{"hidden_dim": 512}'""",
            "metavar": "JSON",
        },
    )
    ctx: int = field(default=5, metadata={"help": "context length: chunks read before the one predicted"})
    min_ctx: int = field(default=1, metadata={"help": "shortest context that makes a sequence"})
    epochs: int = field(default=6, metadata={"help": "passes over the training sequences"})
    batch_size: int = field(default=256, metadata={"help": "global batch size, across DDP ranks"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_frac: float = field(default=0.05, metadata={"help": "share of steps with linear LR warm-up"})
    min_lr_ratio: float = field(default=0.05, metadata={"help": "cosine decay floor, as a share of the learning rate"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm, as in the seeds (0: no clipping)"})
    ema_decay: float = field(
        default=0.999, metadata={"help": "EMA of weights for eval and checkpoints, as in the seeds (0: off)"}
    )
    max_per_article: int = field(
        default=2, metadata={"help": "cap of items per article per batch, the seeds' triage (0: no cap)"}
    )
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "loss weights and their settings"})
    seed: int = field(default=0, metadata={"help": "seed of the initial weights and the batch order"})
    warm_start: str | None = field(
        default=None, metadata={"help": "initialise from a checkpoint (same type and config)", "metavar": "CKPT"}
    )
    warm_start_lr_scale: float = field(
        default=0.5, metadata={"help": "learning-rate factor when warm-starting, as in the seeds"}
    )
    gate_profile: str | None = field(
        default=None,
        metadata={"help": "kill-switch thresholds, a profile name or .toml path (default: from the dataset's encoder)"},
    )
    kill_switches: bool = field(
        default=True, metadata={"help": "abort on the gate profile's epoch schedule and OOD sentinel"}
    )
    eval_batch_size: int = field(default=2048, metadata={"help": "batch size of the val and OOD evaluations"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, where: str = "training config") -> TrainConfig:
        """Types and ranges of every field (``lvm.schemas.TrainSettings``); one line when one is off."""
        from lvm import schemas

        schemas.validate(schemas.TrainSettings, self.to_dict(), where)
        return self

    @classmethod
    def from_dict(cls, d: dict, where: str = "training config") -> TrainConfig:
        if not isinstance(d, dict):
            raise LvmError(f"{where}: expected a JSON object of training settings; got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise LvmError(f"{where}: unknown training config key(s): {', '.join(sorted(map(str, unknown)))}")
        d = dict(d)
        if "loss" in d:
            loss_keys = {f.name for f in fields(LossConfig)}
            if not isinstance(d["loss"], dict) or set(d["loss"]) - loss_keys:
                raise LvmError(f"{where}: loss must be an object with keys among {', '.join(sorted(loss_keys))}")
            d["loss"] = LossConfig(**d["loss"])
        return cls(**d).check(where)


# ----------------------------------------------------------------------------- command line


def json_object(text: str) -> dict:
    """argparse ``type`` of a JSON-object option such as ``--model-config``."""
    from lvm.schemas import parse_json

    try:  # not JSON, nested too deep, too large: one line
        value = parse_json(text, "", "a JSON object option")
    except LvmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _value_type(hint) -> type:
    """``int`` for ``int | None``; the type itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str, overrides: dict | None = None) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``, in an argument group ``title``.

    Type, default and help come from the field (help from ``metadata["help"]``, ``metavar`` too when
    given); a bool is ``--flag/--no-flag``, a dict a JSON object. A field that is itself a dataclass
    gets a group of its own, named after the field. ``overrides`` maps a field name to extra
    ``add_argument`` keywords (e.g. ``choices``).
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    nested = []
    for f in fields(cls):
        kind, default = _value_type(hints[f.name]), _default(f)
        if is_dataclass(kind):
            nested.append((f.name, kind))
            continue
        help_text = f.metadata["help"] + (
            " (default %(default)s)" if isinstance(default, (bool, int, float, str)) else ""
        )
        kw = {"dest": f.name, "default": default, "help": help_text}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = json_object if kind is dict else kind
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        group.add_argument("--" + f.name.replace("_", "-"), **{**kw, **(overrides or {}).get(f.name, {})})
    for name, kind in nested:
        add_config_arguments(parser, kind, name, overrides)


def config_from_args(cls: type, args: argparse.Namespace):
    """The ``cls`` instance that the options of ``add_config_arguments(parser, cls, ...)`` parsed to."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = _value_type(hints[f.name])
        values[f.name] = config_from_args(kind, args) if is_dataclass(kind) else getattr(args, f.name)
    return cls(**values)

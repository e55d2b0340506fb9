"""The epoch gates as a PyTorch Lightning callback (optional extra: ``pip install '.[lightning]'``).

::

    from lvm.train.lightning import EpochGatesCallback

    gates = EpochGatesCallback(dataset="data/wiki-minilm", samples_per_epoch=len(train_set))
    trainer = lightning.Trainer(max_epochs=20, callbacks=[gates])
    trainer.fit(module)           # stops (trainer.should_stop) when an abort rule breaks
    gates.decisions[-1].message   # what was decided after the last validation epoch

At each validation epoch end (not the sanity check) it calls ``EpochGates.after_epoch`` with the
epoch just finished (``trainer.current_epoch + 1``) and the logged ``val_cosine`` /
``ood_cosine`` metrics when the module logs them (``val_key`` / ``ood_key``), else the module
scored on the dataset (``model_fn(module)`` when the module is not itself ``forward(x, mask)``).
A kill sets ``trainer.should_stop``: Lightning ends the fit cleanly after this epoch, checkpoints
kept, and ``killed`` holds the decision.

This module imports without Lightning; ``EpochGatesCallback`` needs ``lightning`` (or the older
``pytorch_lightning``): without either, importing it raises ImportError saying how to install it.
"""

from __future__ import annotations


def _callback_base() -> type:
    import importlib

    for module in ("lightning.pytorch", "pytorch_lightning"):  # the unified package, else the older one
        try:
            return importlib.import_module(module).Callback
        except ImportError:
            continue
    raise ImportError(
        "lvm.train.lightning.EpochGatesCallback needs PyTorch Lightning: pip install 'lvm-gates[lightning]'"
    )


def _metric(metrics, key: str | None) -> float | None:
    if not key or key not in metrics:
        return None
    value = metrics[key]
    return float(value.item() if hasattr(value, "item") else value)


def _build_class() -> type:
    from lvm.train.epoch_gates import Decision, EpochGates

    class EpochGatesCallback(_callback_base()):  # type: ignore[misc]
        """Calls ``EpochGates.after_epoch`` at each validation epoch end; ``trainer.should_stop`` on a kill.

        ``gates``: an ``EpochGates``, or the keyword arguments to build one (``profile``,
        ``samples_per_epoch``, ``dataset``, ``ctx``, ``min_ctx``, ...).
        """

        def __init__(
            self,
            gates: EpochGates | None = None,
            *,
            val_key: str | None = "val_cosine",
            ood_key: str | None = "ood_cosine",
            model_fn=None,
            log=print,
            **gate_kwargs,
        ):
            super().__init__()
            self.gates = gates if gates is not None else EpochGates(**gate_kwargs)
            self.val_key, self.ood_key, self.model_fn, self.report = val_key, ood_key, model_fn, log
            self.decisions: list[Decision] = []
            self.killed: Decision | None = None

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if getattr(trainer, "sanity_checking", False):
                return
            metrics = getattr(trainer, "callback_metrics", {}) or {}
            val, ood = _metric(metrics, self.val_key), _metric(metrics, self.ood_key)
            needs_model = val is None or (ood is None and self.gates.needs_ood(trainer.current_epoch + 1))
            model = (self.model_fn(pl_module) if self.model_fn else pl_module) if needs_model else None
            decision = self.gates.after_epoch(trainer.current_epoch + 1, model=model, val_cosine=val, ood_cosine=ood)
            self.decisions.append(decision)
            if self.report and getattr(trainer, "is_global_zero", True):
                self.report(f"{decision.status} {decision.message}")
            if decision.kill:
                self.killed = decision
                trainer.should_stop = True

    return EpochGatesCallback


def __getattr__(name: str):
    """``EpochGatesCallback`` is built on first use, so the module imports without Lightning."""
    if name == "EpochGatesCallback":
        cls = _build_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The trainer: AdamW, warm-up + cosine LR, grad clip, EMA weights, kill switches, resume, DDP.

A run writes one folder::

    RUN/
      config.json              the resolved training config
      training_history.json    per epoch: losses and every loss component, cosines, lr, seconds,
                               throughput, gate events; plus "status" and, on abort, why
      training.log             the same, human-readable
      best.safetensors/.json   EMA weights with the best val cosine so far
      last.safetensors/.json   EMA weights after the last finished epoch
      resume.pt                optimizer/scheduler/EMA/RNG state to resume after a crash
                               (plain tensors and numbers; read with weights_only=True)

Kill switches (the gate profile's ``training.val_cosine`` and ``training.ood_sentinel`` rules) run
after every epoch through ``lvm.train.epoch_gates.EpochGates`` (the class any other training loop,
``lvm watch`` and the Lightning callback use, so none can disagree with this trainer); an abort
records gate, value and threshold in the history, keeps every checkpoint and ends with exit code
``EXIT_KILL_SWITCH``.

Distributed: the same code under ``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU). The
batch size is global: every rank takes its slice of each global batch, DDP averages gradients, so
the run matches a single process within noise.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lvm.data.datasets import Dataset, open_dataset
from lvm.errors import LvmError
from lvm.evaluation import evaluate
from lvm.io import utc_timestamp, write_atomic, write_json_atomic
from lvm.losses import COMPONENTS, AdaptiveLambda, compute_loss
from lvm.models import MODEL_TYPES, config_dict, count_parameters
from lvm.models.baselines import BASELINES
from lvm.models.checkpoints import (
    check_compatible,
    load_checkpoint,
    make_model,
    save_checkpoint,
)
from lvm.profiles import profile_for_dataset
from lvm.train.config import TrainConfig
from lvm.train.epoch_gates import Decision, EpochGates, check_kill_switches, triage_text
from lvm.train.sampler import article_capped_batches
from lvm.train.schedule import EMA, lr_lambda

__all__ = ["EXIT_KILL_SWITCH", "KillSwitch", "RunState", "TrainConfig", "Trainer", "check_kill_switches"]

EXIT_KILL_SWITCH = 3  # distinct from 1 (pytest/gates RED) and 2 (bad input)
HISTORY_VERSION = 1


class KillSwitch(Exception):
    """Raised (after everything is saved) when a training-time gate aborts the run."""

    def __init__(self, event: dict):
        super().__init__(
            f"kill switch: {event['gate']} at epoch {event['epoch']}: {event['value']:.4f} < {event['threshold']}"
        )
        self.event = event


# ----------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LvmError(f"device {name} requested but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LvmError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LvmError(f"device {name} requested but there are {torch.cuda.device_count()} CUDA devices")
    return device


def to_torch(batch, device):
    x, mask, y = batch
    return (torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device), torch.from_numpy(y).to(device))


@dataclass
class RunState:
    """What the steps of one training run share."""

    model: nn.Module  # the weights being trained
    train_model: nn.Module  # ``model`` or its DDP wrapper: training forward passes go through it
    eval_model: nn.Module  # the EMA weights (or a copy of ``model``'s), evaluated and saved
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    adaptive: AdaptiveLambda | None
    history: dict
    start_epoch: int = 1
    gates: EpochGates | None = None  # the profile's epoch rules (None: kill switches off)


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        if cfg.model not in MODEL_TYPES and cfg.model not in BASELINES:
            raise LvmError(f"unknown model type {cfg.model!r}; known: {', '.join([*MODEL_TYPES, *BASELINES])}")
        if self.out.exists() and not self.out.is_dir():
            raise LvmError(f"{self.out} exists and is not a folder; a run is written as a folder")
        # only rank 0 checks: it starts writing the folder at once, and other ranks would see that
        if self.is_main and self.out.exists() and not resume and any(self.out.iterdir()):
            raise LvmError(
                f"run folder {self.out} already exists: pass --resume to continue it or choose another --out"
            )
        if resume and not (self.out / "resume.pt").is_file():
            raise LvmError(f"nothing to resume in {self.out} (no resume.pt)")
        self.resume = resume
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        self.ds: Dataset = open_dataset(cfg.dataset)
        self.train_view = self.ds.sequences("train", cfg.ctx, cfg.min_ctx)
        self.val_view = self.ds.sequences("val", cfg.ctx, cfg.min_ctx)
        self.ood_view = self.ds.sequences("ood", cfg.ctx, cfg.min_ctx)
        if len(self.train_view) == 0 or len(self.val_view) == 0:
            raise LvmError(
                f"{self.ds.path}: no {'train' if len(self.train_view) == 0 else 'val'} sequences with ctx={cfg.ctx}, "
                f"min_ctx={cfg.min_ctx} (articles too short for the requested context: lower --min-ctx)"
            )
        self.profile = profile_for_dataset(self.ds.meta, cfg.gate_profile) if cfg.kill_switches else None
        # nothing is written until the run is known to start (``_open_run_folder``): a refused run
        # leaves no folder behind, and a folder this trainer created is removed if the run fails
        # before its first checkpoint (``run``)
        self._fresh_out = "missing" if not self.out.exists() else "empty"  # not resumed: checked above
        self._saved = False  # a checkpoint (of an epoch, or of a baseline) is on disk
        self.log = self._logger()

    def _logger(self) -> logging.Logger:
        log = logging.getLogger(f"lvm.train.{id(self)}")
        log.setLevel(logging.INFO)
        log.propagate = False
        if self.is_main:
            sh = logging.StreamHandler()
            sh.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(sh)
        return log

    def _open_run_folder(self) -> None:
        """Rank 0, once the run is known to start: create the run folder and ``training.log``."""
        if not self.is_main or any(isinstance(h, logging.FileHandler) for h in self.log.handlers):
            return
        self.out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(self.out / "training.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.log.addHandler(fh)

    def _close_log(self) -> None:
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)

    def _discard_unstarted_run(self) -> None:
        """A new run that failed before its first checkpoint: the folder back as it was (removed if
        this trainer created it, emptied if it was an empty folder)."""
        if not self.is_main or self.resume or self._saved or not self.out.is_dir():
            return
        import shutil

        self._close_log()
        if self._fresh_out == "missing":
            shutil.rmtree(self.out, ignore_errors=True)
            return
        for entry in self.out.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _model_config(self) -> dict:
        return {"input_dim": self.ds.dim, "ctx": self.cfg.ctx, **self.cfg.model_config}

    def _ckpt_meta(self, model: nn.Module, epoch: int, metrics: dict) -> dict:
        return {
            "model_type": self.cfg.model,
            "model_config": config_dict(model),
            "input_dim": self.ds.dim,
            "ctx": self.cfg.ctx,
            "min_ctx": self.cfg.min_ctx,
            "n_params": count_parameters(model),
            "encoder_fingerprint": self.ds.encoder_fingerprint,
            "dataset_hash": self.ds.content_hash,
            "dataset_path": str(self.ds.path),
            "training": self.cfg.to_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "created_at": utc_timestamp(),
        }

    def _write_history(self, history: dict) -> None:
        if self.is_main:
            write_json_atomic(self.out / "training_history.json", history)

    # -- baselines: no epochs, fit (ridge) and evaluate once

    def _run_baseline(self) -> dict:
        torch.manual_seed(self.cfg.seed)
        model = make_model(self.cfg.model, {"input_dim": self.ds.dim, "ctx": self.cfg.ctx})
        t0 = time.perf_counter()
        if hasattr(model, "fit"):
            model.fit(
                (b[1:] for b in self.train_view.iter_batches(self.cfg.eval_batch_size)),
                (b[1:] for b in self.val_view.iter_batches(self.cfg.eval_batch_size)),
            )
        val = evaluate(model, self.val_view, self.cfg.loss, self.cfg.eval_batch_size)
        ood = evaluate(model, self.ood_view, None, self.cfg.eval_batch_size) if len(self.ood_view) else {"cosine": None}
        row = {
            "epoch": 0,
            "val_cosine": val["cosine"],
            "val_loss": val["loss"],
            "ood_cosine": ood["cosine"],
            "seconds": time.perf_counter() - t0,
        }
        history = self._history_head(model) | {
            "epochs": [row],
            "status": "completed",
            "best_epoch": 0,
            "best_val_cosine": val["cosine"],
        }
        metrics = {"val_cosine": val["cosine"], "ood_cosine": ood["cosine"]}
        if self.is_main:
            self._open_run_folder()
            write_json_atomic(self.out / "config.json", self.cfg.to_dict())
            for stem in ("best", "last"):
                save_checkpoint(self.out / stem, model, self._ckpt_meta(model, 0, metrics))
            self._saved = True
            self._write_history(history)
        self.log.info(
            f"{self.cfg.model}: val cosine {val['cosine']:.4f}, "
            f"ood cosine {ood['cosine'] if ood['cosine'] is None else round(ood['cosine'], 4)}"
        )
        return history

    def _history_head(self, model: nn.Module) -> dict:
        return {
            "history_version": HISTORY_VERSION,
            "model_type": self.cfg.model,
            "n_params": count_parameters(model),
            "dataset": str(self.ds.path),
            "dataset_hash": self.ds.content_hash,
            "encoder_fingerprint": self.ds.encoder_fingerprint,
            "gate_profile": self.profile.name if self.profile else None,
            "world_size": self.world,
            "device": str(self.device),
            "sequences": {"train": len(self.train_view), "val": len(self.val_view), "ood": len(self.ood_view)},
            "loss_config": asdict(self.cfg.loss),
            "events": [],
        }

    # -- trainable models

    # -- trainable models

    def run(self) -> dict:
        """Train (or fit a baseline); a run that fails or is refused before its first checkpoint
        leaves nothing behind (the folder is removed if this trainer created it)."""
        try:
            if self.cfg.model in BASELINES:
                return self._run_baseline()
            return self._train()
        except KillSwitch:
            raise  # raised after everything is saved
        except BaseException:
            self._discard_unstarted_run()
            raise
        finally:
            self._close_log()
            if self.world > 1:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()

    def _train(self) -> dict:
        """Set up (or resume), then per epoch: train, evaluate, record, judge the kill switches, save."""
        run = self._setup()
        for epoch in range(run.start_epoch, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            sums, seen = self._train_epoch(run, epoch)
            train_seconds = time.perf_counter() - t0
            val, ood = self._evaluate_epoch(run, epoch)
            row = self._epoch_row(run, epoch, sums, seen, val, ood, time.perf_counter() - t0, train_seconds)
            metrics, improved = self._record_epoch(run, row)
            self._log_epoch(row)
            abort = self._check_kill_switches(run, epoch, val, ood)
            self._save_epoch(run, epoch, metrics, improved, abort)
            if abort:
                self.log.info(
                    f"ABORT: {abort['gate']} {abort['value']:.4f} < {abort['threshold']} at epoch {epoch}; "
                    f"checkpoints kept in {self.out}"
                )
                raise KillSwitch(abort)
        return self._finish(run)

    def _setup(self) -> RunState:
        """Model (warm-started), DDP wrapper, AdamW, LR schedule, EMA, eval copy and history; resumed
        from resume.pt when asked. The order is fixed: every model built draws from the seeded RNG."""
        cfg = self.cfg
        self._init_distributed()
        torch.manual_seed(cfg.seed)
        model = make_model(cfg.model, self._model_config()).to(self.device)
        lr = self._warm_start(model)
        train_model = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        batches_per_epoch = len(
            article_capped_batches(self.train_view.article_ids, cfg.batch_size, cfg.max_per_article, cfg.seed, 1)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(batches_per_epoch * cfg.epochs, cfg.warmup_frac, cfg.min_lr_ratio)
        )
        ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        adaptive = cfg.loss.make_adaptive()
        eval_model = make_model(cfg.model, self._model_config()).to(self.device)
        history = self._history_head(model) | {
            "epochs": [],
            "status": "running",
            "best_epoch": None,
            "best_val_cosine": None,
        }
        run = RunState(model, train_model, eval_model, opt, sched, ema, adaptive, history)
        self._open_run_folder()  # every check passed: the run starts
        if self.resume:
            self._restore(run)
        elif self.is_main:
            write_json_atomic(self.out / "config.json", cfg.to_dict())
        if self.profile is not None:
            run.gates = EpochGates(self.profile, len(self.train_view), start_epoch=run.start_epoch)
        self.log.info(
            f"training {cfg.model} ({count_parameters(model):,} params) on {len(self.train_view)} sequences "
            f"(ctx={cfg.ctx}, min_ctx={cfg.min_ctx}), {cfg.epochs} epochs, device {self.device}, world {self.world}"
        )
        self._warn_unreached(run)
        return run

    def _warn_unreached(self, run: RunState) -> None:
        """A dataset too small for the kill-switch schedule gets a warning, not an abort at epoch 1."""
        if run.gates is None:
            return
        unreached = run.gates.unreached(self.cfg.epochs)
        run.history["schedule_unreached"] = unreached
        for u in unreached:
            self.log.info(
                f"  WARNING {u['metric']} rule of reference epoch {u['rule_epoch']} (>= {u['threshold']}) falls due at "
                f"epoch {u['due_epoch']} of this run ({len(self.train_view):,} sequences an epoch): not reached in "
                f"{self.cfg.epochs} epochs"
            )

    def _init_distributed(self) -> None:
        """Under torchrun: join the process group; on GPU each rank takes its LOCAL_RANK device."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)

    def _warm_start(self, model: nn.Module) -> float:
        """Load ``cfg.warm_start`` into ``model`` (not on resume: resume.pt has newer weights); the starting LR."""
        cfg = self.cfg
        if not cfg.warm_start or self.resume:
            return cfg.lr
        warm, warm_meta = load_checkpoint(cfg.warm_start)
        check_compatible(warm_meta, self.ds)
        if warm_meta["model_type"] != cfg.model or warm_meta["model_config"] != config_dict(model):
            raise LvmError(
                f"warm start {cfg.warm_start}: a {warm_meta['model_type']} with another config "
                f"cannot initialise this {cfg.model}"
            )
        model.load_state_dict(warm.state_dict())
        return cfg.lr * cfg.warm_start_lr_scale

    def _restore(self, run: RunState) -> None:
        """Continue from resume.pt: weights, optimizer, scheduler, EMA, adaptive λ, RNG and history."""
        from lvm.schemas import check_resume_fits, load_resume_state

        path = self.out / "resume.pt"
        state = load_resume_state(path, self.device)  # weights_only, keys and types checked
        try:
            run.model.load_state_dict(state["model"])
            run.opt.load_state_dict(state["optimizer"])
            run.sched.load_state_dict(state["scheduler"])
            check_resume_fits(path, state, run.model, run.opt)
            if run.ema is not None:
                run.ema.shadow, run.ema.steps = state["ema"] or run.ema.shadow, int(state["ema_steps"])
            if run.adaptive is not None and state.get("adaptive"):
                run.adaptive.load_state_dict(state["adaptive"])
            torch.set_rng_state(state["torch_rng"].cpu())
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise LvmError(f"{path}: does not fit this run's model and optimizer ({why})") from None
        run.start_epoch = int(state["epoch"]) + 1
        from lvm.schemas import nonfinite_path, read_json_object

        history = read_json_object(self.out / "training_history.json", "a run's training history")
        bad = nonfinite_path(history)
        if bad:  # lvm writes only finite numbers: the file was damaged, and resuming would write it back
            raise LvmError(f"{self.out / 'training_history.json'}: {bad} is not a finite number; cannot resume")
        run.history = self._history_until(history, int(state["epoch"]))
        run.history["status"] = "running"
        run.history.setdefault("resumed_at_epoch", []).append(run.start_epoch)
        self.log.info(f"resuming {self.out} at epoch {run.start_epoch}")

    @staticmethod
    def _history_until(history: dict, epoch: int) -> dict:
        """The history as resume.pt saw it: rows and events after ``epoch`` dropped (the history is
        written just before resume.pt, so a kill between the two leaves one epoch that is trained
        again), the best epoch recomputed from the rows kept, an abort of a dropped epoch forgotten."""
        rows = [r for r in history.get("epochs", []) if r.get("epoch", 0) <= epoch]
        history["epochs"] = rows
        history["events"] = [e for e in history.get("events", []) if e.get("epoch", 0) <= epoch]
        best = max(rows, key=lambda r: r["val_cosine"], default=None)  # first of equals, as _record_epoch
        history["best_epoch"] = best["epoch"] if best else None
        history["best_val_cosine"] = best["val_cosine"] if best else None
        if (history.get("aborted") or {}).get("epoch", 0) > epoch:
            history.pop("aborted")
        return history

    def _train_epoch(self, run: RunState, epoch: int) -> tuple[dict, int]:
        """One pass over the article-capped batches (under DDP, this rank's slice of each global batch).

        Returns the sums of every logged value weighted by batch size, and the sequences seen.
        """
        from tqdm.auto import tqdm

        cfg = self.cfg
        run.model.train()
        batches = article_capped_batches(
            self.train_view.article_ids, cfg.batch_size, cfg.max_per_article, cfg.seed, epoch
        )
        if self.world > 1:
            batches = [b[self.rank :: self.world] for b in batches if len(b) >= self.world]
        sums = {k: 0.0 for k in (*COMPONENTS, "total", "lambda_info", "cosine")}
        seen = 0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            disable=not (self.progress and self.is_main),
            leave=False,
        )
        for idx in bar:
            comps = self._train_step(run, idx, epoch)
            for k in sums:
                sums[k] += comps[k] * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{comps['total']:.4f}", cos=f"{comps['cosine']:.3f}")
        return sums, seen

    def _train_step(self, run: RunState, idx, epoch: int) -> dict:
        """One optimizer step on the training sequences ``idx``: loss components and the mean cosine."""
        cfg = self.cfg
        x, mask, y = to_torch(self.train_view.batch(idx), self.device)
        art = torch.from_numpy(self.train_view.article_ids[idx]).to(self.device)
        pred = run.train_model(x, mask)
        loss, comps = compute_loss(pred, y, cfg.loss, art, run.adaptive)
        if not math.isfinite(comps["total"]):
            raise LvmError(
                f"epoch {epoch}: loss became {comps['total']} (NaN/Inf); lower the learning rate or check the data"
            )
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.opt.step()
        run.sched.step()
        if run.ema is not None:
            run.ema.update(run.model)
        comps["cosine"] = float((pred.detach() * y).sum(dim=1).mean())
        return comps

    def _evaluate_epoch(self, run: RunState, epoch: int) -> tuple[dict, dict | None]:
        """Val scores of the EMA weights, and OOD scores at an epoch with an OOD-sentinel rule."""
        cfg = self.cfg
        if run.ema is not None:
            run.ema.copy_to(run.eval_model)
        else:
            run.eval_model.load_state_dict(run.model.state_dict())
        val = evaluate(run.eval_model, self.val_view, cfg.loss, cfg.eval_batch_size, self.device)
        sentinel = run.gates is not None and run.gates.needs_ood(epoch) and len(self.ood_view) > 0
        ood = evaluate(run.eval_model, self.ood_view, None, cfg.eval_batch_size, self.device) if sentinel else None
        return val, ood

    def _epoch_row(
        self,
        run: RunState,
        epoch: int,
        sums: dict,
        seen: int,
        val: dict,
        ood: dict | None,
        seconds: float,
        train_seconds: float,
    ) -> dict:
        """The epoch's row of training_history.json: means over its sequences, val/OOD scores, LR, speed."""
        row = {
            "epoch": epoch,
            "train_loss": sums["total"] / seen,
            "train_cosine": sums["cosine"] / seen,
            "val_loss": val["loss"],
            "val_cosine": val["cosine"],
            **{f"train_loss_{k}": sums[k] / seen for k in COMPONENTS},
            "lambda_info": sums["lambda_info"] / seen,
            "lr": run.opt.param_groups[0]["lr"],
            "seconds": seconds,
            "train_seq_per_s": seen * self.world / train_seconds,
        }
        if ood is not None:
            row["ood_cosine"] = ood["cosine"]
        return row

    def _record_epoch(self, run: RunState, row: dict) -> tuple[dict, bool]:
        """Append ``row`` to the history, track the best epoch; the checkpoint metrics and whether it improved."""
        history = run.history
        history["epochs"].append(row)
        metrics = {k: row[k] for k in ("val_cosine", "ood_cosine") if k in row}
        improved = history["best_val_cosine"] is None or row["val_cosine"] > history["best_val_cosine"]
        if improved:
            history["best_epoch"], history["best_val_cosine"] = row["epoch"], row["val_cosine"]
        return metrics, improved

    def _log_epoch(self, row: dict) -> None:
        self.log.info(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.5f} "
            f"(mse {row['train_loss_mse']:.5f} info {row['train_loss_info']:.4f} "
            f"λ_info {row['lambda_info']:.3f}) train cos {row['train_cosine']:.4f} | val cos {row['val_cosine']:.4f}"
            + (f" | ood cos {row['ood_cosine']:.4f}" if "ood_cosine" in row else "")
            + f" | lr {row['lr']:.2e} | {row['seconds']:.1f} s, {row['train_seq_per_s']:.0f} seq/s"
        )

    def _check_kill_switches(self, run: RunState, epoch: int, val: dict, ood: dict | None) -> dict | None:
        """Judge the profile's epoch rules: record and log every event; the abort event, if any."""
        if run.gates is None:
            return None
        decision: Decision = run.gates.after_epoch(
            epoch, val_cosine=val["cosine"], ood_cosine=ood["cosine"] if ood else None
        )
        run.history["events"].extend(decision.events)
        for e in decision.events:
            self.log.info(
                f"  {e['status']} {e['gate']}: {e['value']:.4f} < {e['threshold']} at epoch {epoch} "
                f"({e['action']}): {e['why']}"
            )
        if decision.triage:
            self.log.info("  " + triage_text())
        return decision.abort

    def _save_epoch(self, run: RunState, epoch: int, metrics: dict, improved: bool, abort: dict | None) -> None:
        """Rank 0: last (and best) checkpoints of the EMA weights, the history, then resume.pt."""
        if not self.is_main:
            return
        save_checkpoint(self.out / "last", run.eval_model, self._ckpt_meta(run.eval_model, epoch, metrics))
        self._saved = True
        if improved:
            save_checkpoint(self.out / "best", run.eval_model, self._ckpt_meta(run.eval_model, epoch, metrics))
        if abort:
            run.history["status"], run.history["aborted"] = "aborted", abort
        self._write_history(run.history)  # history before resume.pt: a resumed run never lacks rows
        state = {
            "epoch": epoch,
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "ema": run.ema.shadow if run.ema else {},
            "ema_steps": run.ema.steps if run.ema else 0,
            "adaptive": run.adaptive.state_dict() if run.adaptive else {},
            "torch_rng": torch.get_rng_state(),
        }
        write_atomic(self.out / "resume.pt", lambda tmp: torch.save(state, tmp))

    def _finish(self, run: RunState) -> dict:
        run.history["status"] = "completed"
        self._write_history(run.history)
        self.log.info(
            f"done: best val cosine {run.history['best_val_cosine']:.4f} "
            f"at epoch {run.history['best_epoch']} -> {self.out}"
        )
        return run.history

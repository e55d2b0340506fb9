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
after every epoch; an abort records gate, value and threshold in the history, keeps every
checkpoint and ends with exit code ``EXIT_KILL_SWITCH``.

Distributed: the same code under ``torchrun --nproc_per_node=N`` (gloo on CPU, nccl on GPU). The
batch size is global: every rank takes its slice of each global batch, DDP averages gradients, so
the run matches a single process within noise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from lvm.data.datasets import Dataset, SequenceView, open_dataset
from lvm.errors import LvmError
from lvm.io import utc_timestamp, write_atomic, write_json_atomic
from lvm.losses import COMPONENTS, LossConfig, compute_loss
from lvm.models import MODEL_TYPES, config_dict, count_parameters
from lvm.models.baselines import BASELINES
from lvm.models.checkpoints import (
    check_compatible,
    load_checkpoint,
    make_model,
    save_checkpoint,
)
from lvm.profiles import Profile, profile_for_dataset
from lvm.train.sampler import article_capped_batches

EXIT_KILL_SWITCH = 3  # distinct from 1 (pytest/gates RED) and 2 (bad input)
HISTORY_VERSION = 1
EMA_WARMUP = 10  # EMA decay ramps as (1+t)/(EMA_WARMUP+t) so early epochs are not the init weights


class KillSwitch(Exception):
    """Raised (after everything is saved) when a training-time gate aborts the run."""

    def __init__(self, event: dict):
        super().__init__(f"kill switch: {event['gate']} at epoch {event['epoch']}: {event['value']:.4f} < {event['threshold']}")
        self.event = event


@dataclass
class TrainConfig:
    dataset: str = "data/wiki-minilm"
    model: str = "amn"
    model_config: dict = field(default_factory=dict)  # overrides of the architecture's defaults
    ctx: int = 5
    min_ctx: int = 1
    epochs: int = 6
    batch_size: int = 256  # global, across DDP ranks
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05  # share of steps with linear LR warm-up
    min_lr_ratio: float = 0.05  # cosine decay floor, as a share of lr
    grad_clip: float = 1.0  # seeds: max_norm 1.0
    ema_decay: float = 0.999  # seeds: EMA 0.999 for eval (0 disables)
    max_per_article: int = 2  # seeds' triage: cap ≤2 samples per article per batch
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    warm_start: str | None = None  # checkpoint to start from
    warm_start_lr_scale: float = 0.5  # seeds: LR × 0.5 when warm-starting
    gate_profile: str | None = None  # default: from the dataset's encoder
    kill_switches: bool = True
    eval_batch_size: int = 2048
    device: str = "auto"
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise LvmError(f"unknown training config key(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if isinstance(d.get("loss"), dict):
            d["loss"] = LossConfig(**d["loss"])
        return cls(**d)


# ----------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LvmError(f"device {name} requested but CUDA is not available")
    return torch.device(name)


def to_torch(batch, device):
    x, mask, y = batch
    return (torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device), torch.from_numpy(y).to(device))


@torch.no_grad()
def evaluate(model: nn.Module, view: SequenceView, loss_cfg: LossConfig | None = None, batch_size: int = 2048, device=None) -> dict:
    """Mean cos(ŷ, y) over every sequence of ``view`` (streamed in batches), plus mean loss."""
    device = device or next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    cos_sum, loss_sum, n = 0.0, 0.0, 0
    # eval loss with a fixed λ_info: the adaptive EMA must only advance on training steps
    cfg = LossConfig(**{**asdict(loss_cfg), "adaptive_info": False}) if loss_cfg is not None else None
    for idx, x, mask, y in view.iter_batches(batch_size):
        xt, mt, yt = to_torch((x, mask, y), device)
        pred = model(xt, mt)
        cos_sum += float((pred * yt).sum())
        if cfg is not None:
            total, _ = compute_loss(pred, yt, cfg, torch.from_numpy(view.article_ids[idx]).to(device))
            loss_sum += float(total) * len(idx)
        n += len(idx)
    model.train(was_training)
    if n == 0:
        return {"cosine": float("nan"), "loss": float("nan"), "n": 0}
    return {"cosine": cos_sum / n, "loss": loss_sum / n if loss_cfg is not None else float("nan"), "n": n}


class EMA:
    """Exponential moving average of the weights: θ̄ ← d·θ̄ + (1−d)·θ, d = min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (EMA_WARMUP + self.steps))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


def lr_lambda(total_steps: int, warmup_frac: float, min_ratio: float):
    warm = max(1, int(total_steps * warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def check_kill_switches(profile: Profile, epoch: int, val_cos: float, ood_cos: float | None) -> tuple[list[dict], dict | None]:
    """Events (warnings) and the abort event (or None) for this epoch under ``profile``."""
    events, abort = [], None
    checks = [("val_cosine", val_cos)] + ([("ood_sentinel", ood_cos)] if ood_cos is not None else [])
    for kind, value in checks:
        for rule in profile.rules_at(kind, epoch):
            if not value < rule.min:
                continue
            event = {
                "gate": f"training.{kind}", "epoch": epoch, "value": round(float(value), 6), "threshold": rule.min,
                "action": rule.action, "status": "RED" if rule.action == "abort" else "AMBER", "why": rule.why,
                "profile": profile.name,
            }
            events.append(event)
            if rule.action == "abort" and abort is None:
                abort = event
    return events, abort


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.is_main = self.rank == 0
        if cfg.model not in MODEL_TYPES and cfg.model not in BASELINES:
            raise LvmError(f"unknown model type {cfg.model!r}; known: {', '.join([*MODEL_TYPES, *BASELINES])}")
        # only rank 0 checks: it starts writing the folder at once, and other ranks would see that
        if self.is_main and self.out.exists() and not resume and any(self.out.iterdir()):
            raise LvmError(f"run folder {self.out} already exists: pass --resume to continue it or choose another --out")
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
        self.log = self._logger()

    def _logger(self) -> logging.Logger:
        log = logging.getLogger(f"lvm.train.{id(self)}")
        log.setLevel(logging.INFO)
        log.propagate = False
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.out / "training.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(fh)
            sh = logging.StreamHandler()
            sh.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(sh)
        return log

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
        row = {"epoch": 0, "val_cosine": val["cosine"], "val_loss": val["loss"], "ood_cosine": ood["cosine"], "seconds": time.perf_counter() - t0}
        history = self._history_head(model) | {"epochs": [row], "status": "completed", "best_epoch": 0, "best_val_cosine": val["cosine"]}
        metrics = {"val_cosine": val["cosine"], "ood_cosine": ood["cosine"]}
        if self.is_main:
            write_json_atomic(self.out / "config.json", self.cfg.to_dict())
            for stem in ("best", "last"):
                save_checkpoint(self.out / stem, model, self._ckpt_meta(model, 0, metrics))
            self._write_history(history)
        self.log.info(f"{self.cfg.model}: val cosine {val['cosine']:.4f}, ood cosine {ood['cosine'] if ood['cosine'] is None else round(ood['cosine'], 4)}")
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

    def run(self) -> dict:
        if self.cfg.model in BASELINES:
            return self._run_baseline()
        try:
            return self._train()
        finally:
            if self.world > 1:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()

    def _train(self) -> dict:
        cfg = self.cfg
        ddp = self.world > 1
        if ddp:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        model = make_model(cfg.model, self._model_config()).to(self.device)
        lr = cfg.lr
        if cfg.warm_start and not self.resume:
            warm, warm_meta = load_checkpoint(cfg.warm_start)
            check_compatible(warm_meta, self.ds)
            if warm_meta["model_type"] != cfg.model or warm_meta["model_config"] != config_dict(model):
                raise LvmError(f"warm start {cfg.warm_start}: a {warm_meta['model_type']} with another config cannot initialise this {cfg.model}")
            model.load_state_dict(warm.state_dict())
            lr = cfg.lr * cfg.warm_start_lr_scale
        train_model = model
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        batches_per_epoch = len(article_capped_batches(self.train_view.article_ids, cfg.batch_size, cfg.max_per_article, cfg.seed, 1))
        total_steps = batches_per_epoch * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, cfg.warmup_frac, cfg.min_lr_ratio))
        ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        adaptive = cfg.loss.make_adaptive()
        eval_model = make_model(cfg.model, self._model_config()).to(self.device)  # holds EMA weights
        history = self._history_head(model) | {"epochs": [], "status": "running", "best_epoch": None, "best_val_cosine": None}
        start_epoch = 1
        if self.resume:
            state = torch.load(self.out / "resume.pt", map_location=self.device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.shadow, ema.steps = state["ema"], int(state["ema_steps"])
            if adaptive is not None and state.get("adaptive"):
                adaptive.load_state_dict(state["adaptive"])
            torch.set_rng_state(state["torch_rng"].cpu())
            history = json.loads((self.out / "training_history.json").read_text())
            history["status"] = "running"
            history.setdefault("resumed_at_epoch", []).append(int(state["epoch"]) + 1)
            start_epoch = int(state["epoch"]) + 1
            self.log.info(f"resuming {self.out} at epoch {start_epoch}")
        elif self.is_main:
            write_json_atomic(self.out / "config.json", cfg.to_dict())
        self.log.info(
            f"training {cfg.model} ({count_parameters(model):,} params) on {len(self.train_view)} sequences "
            f"(ctx={cfg.ctx}, min_ctx={cfg.min_ctx}), {cfg.epochs} epochs, device {self.device}, world {self.world}"
        )
        from tqdm.auto import tqdm

        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            batches = article_capped_batches(self.train_view.article_ids, cfg.batch_size, cfg.max_per_article, cfg.seed, epoch)
            if ddp:
                batches = [b[self.rank :: self.world] for b in batches if len(b) >= self.world]
            sums = {k: 0.0 for k in (*COMPONENTS, "total", "lambda_info", "cosine")}
            seen = 0
            bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not (self.progress and self.is_main), leave=False)
            for idx in bar:
                x, mask, y = to_torch(self.train_view.batch(idx), self.device)
                art = torch.from_numpy(self.train_view.article_ids[idx]).to(self.device)
                pred = train_model(x, mask)
                loss, comps = compute_loss(pred, y, cfg.loss, art, adaptive)
                if not math.isfinite(comps["total"]):
                    raise LvmError(f"epoch {epoch}: loss became {comps['total']} (NaN/Inf); lower the learning rate or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model)
                comps["cosine"] = float((pred.detach() * y).sum(dim=1).mean())
                for k in sums:
                    sums[k] += comps[k] * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{comps['total']:.4f}", cos=f"{comps['cosine']:.3f}")
            train_seconds = time.perf_counter() - t0
            if ema is not None:
                ema.copy_to(eval_model)
            else:
                eval_model.load_state_dict(model.state_dict())
            val = evaluate(eval_model, self.val_view, cfg.loss, cfg.eval_batch_size, self.device)
            ood_rules = self.profile.rules_at("ood_sentinel", epoch) if self.profile else []
            ood = evaluate(eval_model, self.ood_view, None, cfg.eval_batch_size, self.device) if (ood_rules and len(self.ood_view)) else None
            row = {
                "epoch": epoch,
                "train_loss": sums["total"] / seen,
                "train_cosine": sums["cosine"] / seen,
                "val_loss": val["loss"],
                "val_cosine": val["cosine"],
                **{f"train_loss_{k}": sums[k] / seen for k in COMPONENTS},
                "lambda_info": sums["lambda_info"] / seen,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                "train_seq_per_s": seen * self.world / train_seconds,
            }
            if ood is not None:
                row["ood_cosine"] = ood["cosine"]
            history["epochs"].append(row)
            metrics = {"val_cosine": val["cosine"], **({"ood_cosine": ood["cosine"]} if ood else {})}
            improved = history["best_val_cosine"] is None or val["cosine"] > history["best_val_cosine"]
            if improved:
                history["best_epoch"], history["best_val_cosine"] = epoch, val["cosine"]
            events, abort = check_kill_switches(self.profile, epoch, val["cosine"], ood["cosine"] if ood else None) if self.profile else ([], None)
            history["events"].extend(events)
            self.log.info(
                f"epoch {epoch}: train loss {row['train_loss']:.5f} (mse {row['train_loss_mse']:.5f} info {row['train_loss_info']:.4f} "
                f"λ_info {row['lambda_info']:.3f}) train cos {row['train_cosine']:.4f} | val cos {val['cosine']:.4f}"
                + (f" | ood cos {ood['cosine']:.4f}" if ood else "")
                + f" | lr {row['lr']:.2e} | {row['seconds']:.1f} s, {row['train_seq_per_s']:.0f} seq/s"
            )
            for e in events:
                self.log.info(f"  {e['status']} {e['gate']}: {e['value']:.4f} < {e['threshold']} at epoch {epoch} ({e['action']}): {e['why']}")
            if self.is_main:
                save_checkpoint(self.out / "last", eval_model, self._ckpt_meta(eval_model, epoch, metrics))
                if improved:
                    save_checkpoint(self.out / "best", eval_model, self._ckpt_meta(eval_model, epoch, metrics))
                if abort:
                    history["status"], history["aborted"] = "aborted", abort
                self._write_history(history)  # history before resume.pt: a resumed run never lacks rows
                state = {
                    "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "ema": ema.shadow if ema else {}, "ema_steps": ema.steps if ema else 0,
                    "adaptive": adaptive.state_dict() if adaptive else {}, "torch_rng": torch.get_rng_state(),
                }
                write_atomic(self.out / "resume.pt", lambda tmp: torch.save(state, tmp))
            if abort:
                self.log.info(f"ABORT: {abort['gate']} {abort['value']:.4f} < {abort['threshold']} at epoch {epoch}; checkpoints kept in {self.out}")
                raise KillSwitch(abort)
        history["status"] = "completed"
        self._write_history(history)
        self.log.info(f"done: best val cosine {history['best_val_cosine']:.4f} at epoch {history['best_epoch']} -> {self.out}")
        return history

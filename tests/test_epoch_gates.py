"""Epoch gates for any trainer: ``EpochGates`` decides as ``lvm train`` does, ``lvm watch`` stops a
foreign training loop (plain PyTorch writing the seeds' checkpoints) at the epoch where ``lvm train``
kills the same run, files being written are retried, a garbage .pt is one line, and the Lightning
callback (only when lightning is installed) stops a Lightning fit."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_lvm
from lvm.profiles import load_profile
from lvm.train import EXIT_KILL_SWITCH, EpochGates
from lvm.train.epoch_gates import SEEDS_EPOCH2_TRIAGE, check_kill_switches
from lvm.train.watch import KILL_FILE, WATCH_LOG, Watcher, read_log

MODELS_PY = '''
import torch
import torch.nn.functional as F
from torch import nn


class TinyLVM(nn.Module):
    """The user's own model: mean of the real context chunks plus a linear map of the last one."""

    def __init__(self, input_dim=384, ctx=5, use_mean=True):
        super().__init__()
        self.use_mean = use_mean  # False: a linear map of the last chunk only (learns nothing at a tiny lr)
        self.proj = nn.Linear(input_dim, input_dim)

    def forward(self, x, mask):  # (B, T, D), (B, T) -> (B, D)
        m = mask.unsqueeze(-1).to(x.dtype)
        mean = (x * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(mean * float(self.use_mean) + self.proj(x[:, -1]), dim=-1)
'''


def write_profile(path: Path, body: str) -> Path:
    path.write_text('[profile]\nname = "' + path.stem + '"\n' + body)
    return path


def rule(kind: str, epoch: int, lo: float, action: str, why: str = "test") -> str:
    return f'[[training.{kind}]]\nepoch = {epoch}\nmin = {lo}\naction = "{action}"\nwhy = "{why}"\n'


def tiny_model(dim: int = 384, seed: int = 0, use_mean: bool = True):
    ns: dict = {}
    exec(MODELS_PY, ns)  # the same class the factory file defines
    torch.manual_seed(seed)
    return ns["TinyLVM"](input_dim=dim, use_mean=use_mean)


def save_seed_checkpoint(path: Path, model, epoch: int, optimizer=None, val_cosine: float = 0.99) -> None:
    """The seeds' trainer: torch.save of a dict whose args hold a Namespace and a Path; its own val cosine."""
    torch.save(
        {
            "epoch": epoch,
            "model_type": "tiny",
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict() if optimizer else {},
            "val_cosine": val_cosine,
            "model_config": {"input_dim": model.proj.in_features, "ctx": 5, "use_mean": model.use_mean},
            "args": argparse.Namespace(lr=1e-3, min_ctx=1, output_dir=Path("artifacts/lvm/models/tiny")),
        },
        path,
    )


# ----------------------------------------------------------------------------- EpochGates on numbers


def test_decisions_follow_the_profile_and_match_the_trainers_events(tmp_path):
    prof = load_profile(
        str(
            write_profile(
                tmp_path / "p.toml",
                "[training]\nreference_samples_per_epoch = 1000\n"
                + rule("val_cosine", 1, 0.40, "abort", "bad start")
                + rule("val_cosine", 3, 0.50, "warn", "slow")
                + rule("ood_sentinel", 3, 0.30, "abort", "OOD collapse"),
            )
        )
    )
    gates = EpochGates(prof, samples_per_epoch=500)  # half the reference: a rule of epoch E falls due at 2E
    assert not gates.needs_ood(5) and gates.needs_ood(6)
    d1 = gates.after_epoch(1, val_cosine=0.1)
    assert d1.action == "continue" and d1.rule is None and d1.status == "GREEN"  # the epoch-1 rule is due at 2
    d2 = gates.after_epoch(2, val_cosine=0.1)
    assert d2.kill and d2.status == "RED" and d2.rule == "training.val_cosine (epoch 1, min 0.4)"
    assert "0.1000 < 0.4" in d2.message and "bad start" in d2.message
    assert d2.abort == d2.events[0] and d2.events == check_kill_switches(prof, 2, 0.1, None, 500)[0]
    d6 = gates.after_epoch(6, val_cosine=0.45, ood_cosine=0.5)  # epochs 3-5 skipped: nothing due there
    assert d6.action == "warn" and d6.rule.startswith("training.val_cosine (epoch 3") and not d6.kill
    # the same values under a profile without samples scaling: the rules fall due at their own epochs
    plain = EpochGates(prof)
    assert plain.after_epoch(1, val_cosine=0.1).kill


def test_rules_of_skipped_epochs_are_judged_late_and_missing_values_are_named(tmp_path):
    prof = write_profile(
        tmp_path / "p.toml", rule("val_cosine", 1, 0.4, "abort") + rule("ood_sentinel", 2, 0.3, "abort")
    )
    gates = EpochGates(str(prof))
    d = gates.after_epoch(3, val_cosine=0.2)  # a watcher that first saw epoch 3
    assert d.kill and d.events[0]["epoch"] == 1 and d.events[0]["judged_on_epoch"] == 3
    assert "judged late on epoch 3" in d.message
    assert d.unjudged == ["training.ood_sentinel (epoch 2, min 0.3): no OOD cosine"]
    assert gates.after_epoch(4, val_cosine=0.2).action == "continue"  # epoch 1's rule is not judged twice
    nan = EpochGates(str(prof)).after_epoch(1, val_cosine=float("nan"))
    assert nan.action == "continue"  # NaN breaks no rule (the profile's semantics)


def test_an_epoch2_miss_names_the_seeds_triage_fixes_in_order(tmp_path):
    prof = write_profile(tmp_path / "e2.toml", rule("val_cosine", 2, 0.50, "abort", "InfoNCE not effective"))
    gates = EpochGates(str(prof))
    assert gates.after_epoch(1, val_cosine=0.3).triage == ()
    d = gates.after_epoch(2, val_cosine=0.3)
    assert d.kill and d.triage == SEEDS_EPOCH2_TRIAGE
    at = [d.message.index(word) for word in ("temperature", "λ", "effective batch", "projection head", "batch mixing")]
    assert at == sorted(at), d.message
    assert EpochGates(str(prof)).after_epoch(2, val_cosine=0.6).triage == ()  # passing: no triage


def test_a_profile_or_a_dataset_is_needed():
    with pytest.raises(Exception, match="needs a gate profile"):
        EpochGates()


# ----------------------------------------------------------------------------- lvm watch vs lvm train


def _train_tensors(dataset: Path, split: str = "train"):
    from lvm.data.datasets import open_dataset

    view = open_dataset(dataset).sequences(split, 5, 1)
    x, mask, y = view.batch(np.arange(len(view)))
    return torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(y)


def foreign_training_loop(
    run: Path, dataset: Path, watch_args: list[str], epochs: int = 4, lr: float = 1e-3, batch: int = 8, **model_kw
) -> tuple[int | None, list]:
    """A trainer lvm does not own (plain PyTorch, the seeds' checkpoint dict per epoch); after each epoch
    it asks `lvm watch --once` and stops on exit code 3. The epoch it stopped at, and the watch runs."""
    x, mask, y = _train_tensors(dataset)
    model = tiny_model(x.shape[-1], **model_kw)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, mask, y),
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    runs = []
    for epoch in range(1, epochs + 1):
        model.train()
        for xb, mb, yb in loader:
            loss = F.mse_loss(model(xb, mb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        save_seed_checkpoint(run / f"epoch_{epoch}.pt", model, epoch, opt)
        res = run_lvm("watch", str(run), "--once", "--settle", "0", *watch_args)
        runs.append(res)
        assert res.returncode in (0, EXIT_KILL_SWITCH), res.stderr
        if res.returncode == EXIT_KILL_SWITCH or (run / KILL_FILE).exists():
            return epoch, runs
    return None, runs


def test_watch_stops_a_foreign_loop_at_the_epoch_lvm_train_kills_the_same_run(small_dataset, tmp_path):
    n_train = len(_train_tensors(small_dataset)[0])
    # the epoch-1 rule, calibrated on twice this dataset's epoch, falls due at epoch 2 of both runs
    profile = write_profile(
        tmp_path / "strict.toml",
        f"[training]\nreference_samples_per_epoch = {2 * n_train}\n"
        + rule("val_cosine", 1, 0.999, "abort", "unreachable epoch-1 floor"),
    )
    t0 = time.perf_counter()
    res = run_lvm(
        "train", "--dataset", str(small_dataset), "--epochs", "4", "--batch-size", "8", "--threads", "1",
        "--gate-profile", str(profile), "--out", str(tmp_path / "lvm_run"), "--quiet",
    )  # fmt: skip
    assert res.returncode == EXIT_KILL_SWITCH, res.stderr
    hist = json.loads((tmp_path / "lvm_run" / "training_history.json").read_text())
    train_kill_epoch = hist["aborted"]["epoch"]
    assert train_kill_epoch == 2 and len(hist["epochs"]) == 2

    run = tmp_path / "foreign"
    run.mkdir()
    (tmp_path / "models.py").write_text(MODELS_PY)
    watch_args = [
        "--factory", f"py:{tmp_path / 'models.py'}:TinyLVM", "--dataset", str(small_dataset),
        "--gate-profile", str(profile),
    ]  # fmt: skip
    watch_kill_epoch, runs = foreign_training_loop(run, small_dataset, watch_args)
    assert watch_kill_epoch == train_kill_epoch == 2
    assert runs[0].stdout.startswith("GREEN epoch_1.pt: epoch 1") and "-> continue" in runs[0].stdout
    assert runs[1].stdout.startswith("RED   epoch_2.pt: epoch 2") and "-> kill" in runs[1].stdout
    assert "the file says val cos 0.9900" in runs[1].stdout
    records = [r for r in read_log(run / WATCH_LOG) if r["kind"] == "decision"]
    assert [(r["epoch"], r["action"]) for r in records] == [(1, "continue"), (2, "kill")]
    killed = records[-1]
    # scored by the watcher on the dataset, never the file's own number (recorded beside it)
    assert killed["file_val_cosine"] == 0.99 and killed["val_cosine"] < 0.9
    assert killed["samples_per_epoch"] == n_train and killed["rule"] == "training.val_cosine (epoch 1, min 0.999)"
    assert killed["events"][0]["gate"] == hist["aborted"]["gate"]
    kill = json.loads((run / KILL_FILE).read_text())
    assert kill["epoch"] == 2 and kill["exit_code"] == EXIT_KILL_SWITCH and kill["file"] == "epoch_2.pt"

    # the lvm run itself, watched from outside (under the profile it trained with): the same kill, the same
    # value as the trainer recorded
    res = run_lvm("watch", str(tmp_path / "lvm_run"), "--once", "--settle", "0")
    assert res.returncode == EXIT_KILL_SWITCH, res.stderr + res.stdout
    (rec,) = [r for r in read_log(tmp_path / "lvm_run" / WATCH_LOG) if r["kind"] == "decision"]
    assert rec["epoch"] == 2 and rec["action"] == "kill"
    assert rec["events"][0]["value"] == pytest.approx(hist["aborted"]["value"], abs=1e-5)
    print(f"lvm train and lvm watch both kill at epoch {train_kill_epoch} ({time.perf_counter() - t0:.1f} s)")


@pytest.mark.slow
def test_the_default_profile_kills_a_run_that_does_not_learn_at_the_same_epoch(default_dataset, tmp_path):
    """The shipped minilm profile on the default data, a learning rate too low to learn (1e-7): `lvm train`
    kills its (small) GRU at epoch 1 (val cosine < 0.40), and `lvm watch` stops the foreign loop at epoch 1 too."""
    res = run_lvm(
        "train", "--dataset", str(default_dataset), "--model", "gru", "--lr", "1e-7", "--epochs", "3",
        "--model-config", '{"hidden_dim": 32, "n_layers": 1}', "--out", str(tmp_path / "lvm_run"), "--quiet",
    )  # fmt: skip
    assert res.returncode == EXIT_KILL_SWITCH, res.stderr
    hist = json.loads((tmp_path / "lvm_run" / "training_history.json").read_text())
    run = tmp_path / "foreign"
    run.mkdir()
    (tmp_path / "models.py").write_text(MODELS_PY)
    watch_args = ["--factory", f"py:{tmp_path / 'models.py'}:TinyLVM", "--dataset", str(default_dataset)]
    epoch, runs = foreign_training_loop(run, default_dataset, watch_args, epochs=3, lr=1e-7, batch=256, use_mean=False)
    assert epoch == hist["aborted"]["epoch"] == 1, runs[-1].stdout
    (rec,) = [r for r in read_log(run / WATCH_LOG) if r["kind"] == "decision"]
    assert rec["profile"] == hist["gate_profile"] == "minilm-wiki-vital"
    assert rec["rule"] == "training.val_cosine (epoch 1, min 0.4)" and rec["val_cosine"] < 0.4


# ----------------------------------------------------------------------------- files being written, garbage, KILL


def test_a_checkpoint_being_written_is_retried_not_judged(small_dataset, tmp_path):
    profile = write_profile(tmp_path / "p.toml", rule("val_cosine", 1, -1.0, "abort"))
    (tmp_path / "models.py").write_text(MODELS_PY)
    whole = tmp_path / "whole.pt"
    save_seed_checkpoint(whole, tiny_model(), 1)
    data = whole.read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    lines: list[str] = []
    w = Watcher(
        run, dataset=str(small_dataset), profile=str(profile), factory=f"py:{tmp_path / 'models.py'}:TinyLVM",
        settle=0.0, out=lines.append, err=lines.append,
    )  # fmt: skip
    target = run / "epoch_1.pt"
    target.write_bytes(data[: len(data) // 2])  # the trainer is half-way through torch.save
    assert w.poll() == [] and w.pending == ["epoch_1.pt"]  # first look: unreadable, retried
    with open(target, "ab") as fh:
        fh.write(data[len(data) // 2 : len(data) * 3 // 4])  # it grew: still being written
    assert w.poll() == [] and w.pending == ["epoch_1.pt"]
    with open(target, "ab") as fh:
        fh.write(data[len(data) * 3 // 4 :])
    assert w.poll() == [] and w.pending == ["epoch_1.pt"]  # size changed since the last look
    (decision,) = w.poll()  # settled and whole: judged once
    assert decision.action == "continue" and not lines[0].startswith("lvm watch: error")
    assert w.poll() == [] and [r["kind"] for r in read_log(run / WATCH_LOG)] == ["decision"]

    # `lvm watch --once` while a writer is still appending (for longer than the watcher takes to start):
    # it waits, then judges the whole file, once
    save_seed_checkpoint(whole, tiny_model(), 2)
    data = whole.read_bytes()
    step = len(data) // 12 + 1
    finished: list[float] = []

    def slow_writer(path: Path) -> None:
        with open(path, "wb") as fh:
            for i in range(0, len(data), step):
                fh.write(data[i : i + step])
                fh.flush()
                time.sleep(0.5)
        finished.append(time.monotonic())

    writer = threading.Thread(target=slow_writer, args=(run / "epoch_2.pt",))
    writer.start()
    res = run_lvm(
        "watch", str(run), "--once", "--settle", "1", "--factory", f"py:{tmp_path / 'models.py'}:TinyLVM",
        "--dataset", str(small_dataset), "--gate-profile", str(profile),
    )  # fmt: skip
    returned = time.monotonic()
    writer.join()
    assert res.returncode == 0, res.stderr
    assert finished[0] < returned, "the watcher returned before the file was whole"
    assert res.stderr == "" and res.stdout.startswith("GREEN epoch_2.pt: epoch 2"), res.stdout + res.stderr
    assert [(r["kind"], r.get("epoch")) for r in read_log(run / WATCH_LOG)] == [("decision", 1), ("decision", 2)]


def test_a_garbage_pt_is_one_line_and_not_read_again(small_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "epoch_1.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    args = ["watch", str(run), "--once", "--settle", "0", "--factory", "py:x.py:Model", "--dataset", str(small_dataset)]
    res = run_lvm(*args)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "epoch_1.pt" in res.stderr and "Traceback" not in res.stderr
    (rec,) = read_log(run / WATCH_LOG)
    assert rec["kind"] == "error" and rec["file"] == "epoch_1.pt"
    again = run_lvm(*args)
    assert again.returncode == 0 and again.stderr == "" and "no new checkpoint" in again.stdout


def test_a_kill_writes_KILL_and_signals_the_trainers_pid(small_dataset, tmp_path):
    profile = write_profile(tmp_path / "p.toml", rule("val_cosine", 1, 0.999, "abort"))
    (tmp_path / "models.py").write_text(MODELS_PY)
    run = tmp_path / "run"
    run.mkdir()
    save_seed_checkpoint(run / "best_model.pt", tiny_model(), 1)
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        res = run_lvm(
            "watch", str(run), "--interval", "0.2", "--settle", "0", "--pid", str(trainer.pid),
            "--factory", f"py:{tmp_path / 'models.py'}:TinyLVM", "--dataset", str(small_dataset),
            "--gate-profile", str(profile),
        )  # fmt: skip
        assert res.returncode == EXIT_KILL_SWITCH, res.stderr
        assert trainer.wait(timeout=10) == -signal.SIGTERM
    finally:
        trainer.kill()
    assert f"sent SIGTERM to pid {trainer.pid}" in res.stdout and (run / KILL_FILE).is_file()
    assert json.loads((run / KILL_FILE).read_text())["rule"] == "training.val_cosine (epoch 1, min 0.999)"
    # while KILL is there a watcher says so and exits 3; without --factory a .pt is refused in one line
    assert run_lvm("watch", str(run), "--once", "--dataset", str(small_dataset)).returncode == EXIT_KILL_SWITCH
    (run / KILL_FILE).unlink()
    save_seed_checkpoint(run / "epoch_2.pt", tiny_model(), 2)
    res = run_lvm("watch", str(run), "--once", "--settle", "0", "--dataset", str(small_dataset))
    assert res.returncode == 2 and "--factory" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_watcher_ends_with_the_run_and_judges_each_epoch_once(small_dataset, tmp_path):
    profile = write_profile(tmp_path / "p.toml", rule("val_cosine", 1, -1.0, "abort"))
    (tmp_path / "models.py").write_text(MODELS_PY)
    run = tmp_path / "run"
    run.mkdir()
    model = tiny_model()
    for name, epoch in (("epoch_1.pt", 1), ("best_model.pt", 1), ("final_model.pt", 1)):
        save_seed_checkpoint(run / name, model, epoch)
    lines: list[str] = []
    w = Watcher(
        run, dataset=str(small_dataset), profile=str(profile), factory=f"py:{tmp_path / 'models.py'}:TinyLVM",
        settle=0.0, out=lines.append, err=lines.append,
    )  # fmt: skip
    assert w.run(interval=0.1) == 0  # final_model.pt: the seeds' trainer is done
    assert [(r["kind"], r["file"]) for r in read_log(run / WATCH_LOG)] == [
        ("decision", "epoch_1.pt"),
        ("skip", "best_model.pt"),
        ("skip", "final_model.pt"),
    ]
    assert lines[0].startswith("GREEN epoch_1.pt") and lines[-1].startswith("done")


def test_watch_flags_are_bounded():
    res = run_lvm("watch", ".", "--interval", "0")
    assert res.returncode == 2 and "--interval" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- Lightning (optional)


def test_the_lightning_module_imports_without_lightning():
    import lvm.train.lightning as lt

    try:
        import lightning  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"lvm-gates\[lightning\]"):
            lt.EpochGatesCallback  # noqa: B018


def test_lightning_callback_stops_the_fit_on_a_kill(small_dataset, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lvm.train.lightning import EpochGatesCallback

    x, mask, y = _train_tensors(small_dataset)
    profile = write_profile(tmp_path / "p.toml", rule("val_cosine", 2, 0.999, "abort"))

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_model(x.shape[-1])

        def forward(self, xb, mb):
            return self.net(xb, mb)

        def training_step(self, batch, _):
            xb, mb, yb = batch
            return F.mse_loss(self(xb, mb), yb)

        def validation_step(self, batch, _):
            xb, mb, yb = batch
            self.log("val_cosine", (self(xb, mb) * yb).sum(-1).mean())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    data = torch.utils.data.TensorDataset(x, mask, y)
    loader = torch.utils.data.DataLoader(data, batch_size=len(data))
    callback = EpochGatesCallback(profile=str(profile), dataset=str(small_dataset), log=None)
    trainer = pl.Trainer(
        max_epochs=5, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Module(), loader, loader)
    assert callback.killed is not None and callback.killed.epoch == 2
    assert [d.action for d in callback.decisions] == ["continue", "kill"] and trainer.current_epoch == 2

"""Model gates (per checkpoint × dataset). Thresholds come from the gate profile."""

from pathlib import Path

import pytest

from lvm import gates
from lvm.errors import LvmError
from lvm.schemas import read_json


def test_checkpoint_integrity(lvm_model, gate_status):
    gate_status(lvm_model[1])


def test_output_sanity(val_eval, gate_profile, gate_status):
    gate_status(gates.output_sanity(val_eval, gate_profile))


def _baselines(gate_session, lvm_dataset, ev):
    return gate_session.baselines(lvm_dataset, ev.view.ctx, ev.view.min_ctx)


def test_val_cosine(gate_session, lvm_dataset, val_eval, gate_profile, gate_status):
    gate_status(
        gates.cosine_gate(
            "val_cosine", val_eval, gate_profile, baselines=_baselines(gate_session, lvm_dataset, val_eval)
        ),
        per_sequence=val_eval.cos,
        articles=val_eval.view.article_ids,
    )


def test_ood_cosine(gate_session, lvm_dataset, ood_eval, val_eval, gate_profile, gate_status):
    base = _baselines(gate_session, lvm_dataset, ood_eval)
    gate_status(
        gates.cosine_gate("ood_cosine", ood_eval, gate_profile, other=val_eval, baselines=base),
        per_sequence=ood_eval.cos,
        articles=ood_eval.view.article_ids,
    )


@pytest.mark.parametrize("split", ["val", "ood"])
def test_beats_baselines(split, gate_session, lvm_dataset, val_eval, ood_eval, gate_profile, gate_status):
    ev = val_eval if split == "val" else ood_eval
    gate_status(gates.beats_baselines(ev, _baselines(gate_session, lvm_dataset, ev), gate_profile))


@pytest.mark.parametrize("split", ["val", "ood"])
def test_offset_sweep(split, val_eval, ood_eval, gate_profile, gate_status):
    gate_status(gates.offset_sweep(val_eval if split == "val" else ood_eval, gate_profile))


def test_no_collapse(val_eval, gate_profile, gate_status):
    gate_status(gates.no_collapse(val_eval, gate_profile))


def test_context_ablations(val_eval, gate_profile, gate_status):
    gate_status(gates.context_ablations(val_eval, gate_profile))


def test_retrieval(gate_session, lvm_dataset, val_eval, gate_profile, gate_status, request):
    index, nprobe = gate_session.index(lvm_dataset), request.config.getoption("--nprobe")
    base = _baselines(gate_session, lvm_dataset, val_eval)
    gate_status(gates.retrieval(val_eval, index, gate_profile, nprobe, baselines=base))


def test_latency(val_eval, gate_profile, gate_status, request):
    """Batch-1 forward latency against a reference probe timed in the same process."""
    gate_status(gates.latency(val_eval, gate_profile, threads=request.config.getoption("--latency-threads")))


def test_training_health(lvm_model, checkpoint_name, gate_profile, gate_status):
    loaded, _ = lvm_model
    card = loaded.card if loaded else None
    hist_path = Path(card.history_path) if card and card.history_path else None
    try:  # a history that is not JSON (or nested too deep) is RED with the one-line reason
        history = read_json(hist_path, "the training history") if hist_path and hist_path.is_file() else None
    except LvmError as exc:
        pytest.fail(f"training history cannot be read: {exc}", pytrace=False)
    gate_status(
        gates.training_health(
            history, gate_profile, epoch=card.epoch if card else None, checkpoint=checkpoint_name, dataset=None
        )
    )

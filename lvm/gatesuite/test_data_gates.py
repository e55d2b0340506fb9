"""Data gates (per dataset). Thresholds come from the gate profile; see ../shared/GATES.md."""

from lvm import gates


def test_encoder_fingerprint(gate_session, lvm_dataset, gate_profile, gate_status):
    gate_status(gate_session.space_verdict(lvm_dataset, "encoder_fingerprint"))


def test_normalization(gate_session, lvm_dataset, gate_profile, gate_status):
    gate_status(gate_session.space_verdict(lvm_dataset, "normalization"))


def test_oracle_recall(gate_session, lvm_dataset, gate_profile, gate_status):
    gate_status(gates.oracle_recall(lvm_dataset, gate_session.index(lvm_dataset), gate_profile))


def _worst_over_contexts(gate, gate_session, ds, profile):
    """A data gate over the train sequences of every context the gated models read."""
    results = [gate(ds.sequences("train", ctx, min_ctx), profile) for ctx, min_ctx in gate_session.data_contexts(ds)]
    return max(results, key=lambda r: {"GREEN": 0, "SKIP": 0, "AMBER": 1, "RED": 2}[r.status])


def test_alignment(gate_session, lvm_dataset, gate_profile, gate_status):
    gate_status(_worst_over_contexts(gates.alignment, gate_session, lvm_dataset, gate_profile))


def test_order(lvm_dataset, gate_profile, gate_status):
    gate_status(gates.order(lvm_dataset, gate_profile))


def test_coherence(lvm_dataset, gate_profile, gate_status):
    gate_status(gates.coherence(lvm_dataset, gate_profile))


def test_coherence_drift(gate_session, lvm_dataset, gate_profile, gate_status, request):
    base = request.config.getoption("--baseline-dataset")
    gate_status(gates.coherence_drift(lvm_dataset, gate_session.dataset(base) if base else None, gate_profile))


def test_split_hygiene(gate_session, lvm_dataset, gate_profile, gate_status, request):
    ood = request.config.getoption("--ood-dataset")
    index = gate_session.index(lvm_dataset)
    gate_status(gates.split_hygiene(lvm_dataset, gate_profile, gate_session.dataset(ood) if ood else None, index=index))


def test_batch_hygiene(gate_session, lvm_dataset, gate_profile, gate_status):
    gate_status(_worst_over_contexts(gates.batch_hygiene, gate_session, lvm_dataset, gate_profile))

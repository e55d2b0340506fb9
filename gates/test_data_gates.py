"""Data gates (per dataset). Thresholds come from the gate profile; see ../shared/GATES.md."""

from lvm import gates


def test_encoder_fingerprint(gate_session, lvm_dataset, gate_profile, gate_status, request):
    fps = {}
    for path in request.config.getoption("--checkpoint"):
        _, _, meta = gate_session.checkpoint(path, lvm_dataset)
        if meta is not None:
            fps[meta["_path"]] = meta["encoder_fingerprint"]
    gate_status(gates.encoder_fingerprint(lvm_dataset, gate_profile, fps))


def test_normalization(lvm_dataset, gate_profile, gate_status):
    gate_status(gates.normalization(lvm_dataset, gate_profile))


def test_oracle_recall(gate_session, lvm_dataset, gate_profile, gate_status):
    gate_status(gates.oracle_recall(lvm_dataset, gate_session.index(lvm_dataset), gate_profile))


def test_alignment(lvm_dataset, gate_profile, gate_status):
    gate_status(gates.alignment(lvm_dataset.sequences("train", 5, 1), gate_profile))


def test_coherence(lvm_dataset, gate_profile, gate_status):
    gate_status(gates.coherence(lvm_dataset, gate_profile))


def test_coherence_drift(gate_session, lvm_dataset, gate_profile, gate_status, request):
    base = request.config.getoption("--baseline-dataset")
    gate_status(gates.coherence_drift(lvm_dataset, gate_session.dataset(base) if base else None, gate_profile))


def test_split_hygiene(gate_session, lvm_dataset, gate_profile, gate_status, request):
    ood = request.config.getoption("--ood-dataset")
    gate_status(gates.split_hygiene(lvm_dataset, gate_profile, gate_session.dataset(ood) if ood else None))


def test_batch_hygiene(lvm_dataset, gate_profile, gate_status):
    gate_status(gates.batch_hygiene(lvm_dataset.sequences("train", 5, 1), gate_profile))

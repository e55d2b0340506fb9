"""Article-disjoint train / val / OOD splits, deterministic from a seed.

OOD policies:
- ``id-range``: the last ``ood_fraction`` of articles by article id (the seeds' way: their OOD
  set was the highest article ids, i.e. articles the model never saw);
- ``topics``: every article whose topic is in ``ood_topics`` (held-out subject areas);
- ``none``: no OOD split (e.g. when a separate OOD dataset is used).
Validation articles are then drawn at random (seeded) from the remaining ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from lvm.errors import LvmError

TRAIN, VAL, OOD = 0, 1, 2
SPLIT_NAMES = ("train", "val", "ood")
OOD_POLICIES = ("id-range", "topics", "none")


@dataclass(frozen=True)
class SplitPolicy:
    ood: str = "id-range"
    ood_fraction: float = 0.1
    ood_topics: tuple[str, ...] = field(default_factory=tuple)
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.ood not in OOD_POLICIES:
            raise LvmError(f"unknown OOD policy {self.ood!r}: expected one of {', '.join(OOD_POLICIES)}")
        for name in ("ood_fraction", "val_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise LvmError(f"{name.replace('_', '-')} must be in [0, 1), got {v}")
        if self.ood == "topics" and not self.ood_topics:
            raise LvmError("the 'topics' OOD policy needs at least one topic (--ood-topics)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ood_topics"] = list(self.ood_topics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SplitPolicy:
        d = dict(d)
        d["ood_topics"] = tuple(d.get("ood_topics", ()))
        return cls(**d)


def assign_splits(n_articles: int, topics: list[str], policy: SplitPolicy) -> np.ndarray:
    """Split code (TRAIN/VAL/OOD) per article id 0..n_articles-1; article-disjoint by construction."""
    split = np.full(n_articles, TRAIN, dtype=np.int8)
    if policy.ood == "id-range":
        n_ood = int(round(n_articles * policy.ood_fraction))
        if n_ood:
            split[n_articles - n_ood :] = OOD
    elif policy.ood == "topics":
        wanted = set(policy.ood_topics)
        known = set(topics)
        missing = wanted - known
        if missing:
            raise LvmError(
                f"OOD topic(s) {', '.join(sorted(missing))} not in the corpus; "
                f"known topics: {', '.join(sorted(t for t in known if t)) or '(none)'}"
            )
        split[np.array([t in wanted for t in topics], dtype=bool)] = OOD
    rest = np.flatnonzero(split == TRAIN)
    n_val = int(round(len(rest) * policy.val_fraction))
    if n_val:
        rng = np.random.default_rng(policy.seed)
        split[rng.choice(rest, size=n_val, replace=False)] = VAL
    if not (split == TRAIN).any():
        raise LvmError("the split policy leaves no training articles")
    return split

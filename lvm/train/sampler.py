"""The trainer's batch sampler: shuffled batches with at most ``max_per_article`` items per article.

Same-article items are near-duplicates of each other's targets; as in-batch InfoNCE negatives
they teach the model to push apart what should be close (the seeds' batch-hygiene check). The
loss masks them, and the cap keeps batches diverse (seeds' triage fix 5: "cap ≤2 per article").
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np


def article_capped_batches(
    article_ids: np.ndarray,
    batch_size: int,
    max_per_article: int | None,
    seed: int,
    epoch: int,
    limit: int | None = None,
) -> list[np.ndarray]:
    """Indices 0..N-1 shuffled (from ``seed`` and ``epoch``) into batches of ``batch_size``.

    Every item appears exactly once. No batch holds more than ``max_per_article`` items of one
    article (``None`` or 0: no cap); an item that would exceed the cap waits for a later batch, so
    the last few batches may be smaller. ``limit`` stops after that many batches (the same first
    batches as a full epoch: gates inspect a few without building them all).
    """
    n = len(article_ids)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if not max_per_article:
        return [order[s : s + batch_size] for s in range(0, n, batch_size)][:limit]
    batches: list[np.ndarray] = []
    waiting: deque[int] = deque()
    pending = iter(order.tolist())
    exhausted = False
    while (not exhausted or waiting) and (limit is None or len(batches) < limit):
        batch: list[int] = []
        counts: Counter = Counter()
        for _ in range(len(waiting)):  # deferred items first, so none waits for long
            i = waiting.popleft()
            if len(batch) < batch_size and counts[article_ids[i]] < max_per_article:
                batch.append(i)
                counts[article_ids[i]] += 1
            else:
                waiting.append(i)
        while len(batch) < batch_size and not exhausted:
            i = next(pending, None)
            if i is None:
                exhausted = True
                break
            if counts[article_ids[i]] < max_per_article:
                batch.append(i)
                counts[article_ids[i]] += 1
            else:
                waiting.append(i)
        if not batch:
            if exhausted and not waiting:  # the order ran out exactly at a batch boundary
                break
            raise RuntimeError("batch sampler made no progress")  # a fresh batch accepts any item
        batches.append(np.asarray(batch, dtype=np.int64))
    return batches

"""Failure-mode samples (``--log-samples N``): the sequences behind a checkpoint's val cosine, with text.

Per checkpoint, on the val split of the first ``--dataset``, the N worst sequences (lowest model
cosine to the target; ties by sequence order) and N seeded random ones (seed 0, drawn without
replacement, listed in sequence order). Each SAMPLE holds the article and the target's position, the
context and target texts (``texts.jsonl``), the model's cosine to the target and the best null
baseline's on the same sequence, the top-3 bank texts nearest to the prediction (the dataset's FAISS
index, searched as the ``retrieval`` gate searches it, ``--nprobe`` included) and a category.

Cosines are dot products of the raw prediction with unit chunk vectors, as every gate computes them
(``metrics.rowwise_cos``; unit outputs are ``output_sanity``'s). The model cosines are the very
per-sequence scores the ``val_cosine`` gate averages (``ModelEval.cos``, computed once): the samples
are taken in the process that ran that gate, from its predictions, so no model runs twice; only the
best baseline runs again, on the 2N chosen sequences. The best baseline is the one with the highest
mean val cosine on the gates' own sample (``beats_baselines``' ``sample``, seed 0), as
``val_cosine`` / ``beats_baselines`` name it.

**Categories** (first rule that holds; ``CATEGORY_RULES`` says the same in the file):

- ``copied_last``: the prediction stayed on the last context chunk instead of moving on:
  cos(ŷ, last) ≥ 0.95 (a copy), or the top-1 nearest bank text is the last context chunk (or an
  exact duplicate of it) and cos(ŷ, last) ≥ cos(ŷ, target) + 0.05. Closeness to the last chunk alone
  is not enough: a healthy prediction often sits between the last chunk and the next one.
- ``drifted``: the top-1 nearest bank text belongs to another article.
- ``near_miss``: the top-1 nearest bank text is from the right article but is not the target (nor an
  exact duplicate of it).
- ``generic``: anything else: the top-1 is the target itself (``hit``; a low-cosine hit is a vague
  prediction that no other text beats) or the index returned nothing.

Measured on the default data: the copy-last control is ``copied_last`` on every sample, a model that
answers with another article's chunk ``drifted`` on every sample; the smoke AMN (val cosine 0.58)
averages cos 0.76 to the last context chunk against 0.57 to the target on random samples, so about
half of its random samples (and 60 % of its worst) are ``copied_last`` by the rule above (by the
margin alone, 80-100 % would be), most others ``near_miss`` with an earlier context chunk as top-1.

``category_counts`` count the recorded list entries (worst then random: a sequence in both lists
counts twice), ``counts_over`` says so. The file, ``<results stem>.samples.json`` beside the results
file, is written atomically by the controller, from parts the processes that ran ``val_cosine``
write into the recorder's parts folder (xdist workers included).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lvm.bounds import Bound

SCHEMA, VERSION = "lvm-samples", 1
PROPERTY = "lvm_gate_samples"  # the JUnit/user property that carries a part's file name (JSON)
N_BOUND = Bound(int, 0, 10_000)
SEED = 0
N_NEAREST = 3
COPY_COS = 0.95  # cos(ŷ, last context chunk) at which a prediction is a copy of it
COPY_MARGIN = 0.05  # ... or this much closer to the last chunk than to the target, the last chunk being top-1
CATEGORIES = ("copied_last", "drifted", "near_miss", "generic")
COUNTS_OVER = "worst+random"
CATEGORY_RULES = {
    "copied_last": f"cos(pred, last context chunk) >= {COPY_COS}, or the top-1 nearest bank text is the last "
    f"context chunk (or an exact duplicate) and cos(pred, last) >= cos(pred, target) + {COPY_MARGIN}",
    "drifted": "else: the top-1 nearest bank text is from another article",
    "near_miss": "else: the top-1 nearest bank text is from the target's article but is not the target "
    "(nor an exact duplicate of it)",
    "generic": "else: the top-1 is the target itself (hit) or nothing was found",
}


def samples_path(results: str | Path) -> Path:
    """``reports/gate_results.json`` -> ``reports/gate_results.samples.json``."""
    results = Path(results)
    return results.with_name(results.stem + ".samples.json")


def pick(cos: np.ndarray, n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(the ``n`` lowest-cosine sequence indices, lowest first; ``n`` seeded random ones, sorted).
    A NaN cosine (a non-finite prediction) counts as the lowest."""
    cos = np.asarray(cos, dtype=np.float64)
    n = min(int(n), len(cos))
    key = np.where(np.isnan(cos), -np.inf, cos)
    worst = np.argsort(key, kind="stable")[:n]
    rand = np.sort(np.random.default_rng(seed).choice(len(cos), size=n, replace=False)) if n else worst[:0]
    return worst.astype(np.int64), rand.astype(np.int64)


def categorize(
    cos_target: float, cos_last: float, top1: int | None, target: int, last: int, same_article: bool, canon
) -> str:
    """The category of one prediction (see the module's rules). ``top1``/``target``/``last`` are bank
    rows (``top1`` None: nothing found), ``canon`` maps a row to its first exact duplicate."""
    on_last = top1 is not None and canon[top1] == canon[last]
    if cos_last >= COPY_COS or (on_last and cos_last >= cos_target + COPY_MARGIN):
        return "copied_last"
    if top1 is None or canon[top1] == canon[target]:
        return "generic"
    return "near_miss" if same_article else "drifted"


def best_baseline(ev, baselines: dict, profile) -> str:
    """The baseline with the highest mean val cosine on the gates' seeded sample (the same sample,
    and the same cached scores, as ``val_cosine`` and ``beats_baselines``)."""
    from lvm.gates.model import baseline_cosines
    from lvm.gates.status import gate_params

    idx = ev.sample(gate_params(profile, "beats_baselines")["sample"], 0)
    scores = {name: float(np.mean(c)) for name, c in baseline_cosines(ev, baselines, idx).items()}
    return max(scores, key=lambda name: scores[name])


def _nearest(index, pred: np.ndarray, nprobe: int | None) -> np.ndarray:
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = nprobe  # as the retrieval gate searches
    _, found = index.search(np.ascontiguousarray(pred, dtype=np.float32), N_NEAREST)
    return np.asarray(found, dtype=np.int64)


def collect(ev, baselines: dict, index, profile, n: int, nprobe: int | None = None, seed: int = SEED) -> dict:
    """One checkpoint's entry: ``baseline``, ``category_counts``, ``worst`` and ``random`` SAMPLEs.

    ``ev``: the model's val ``ModelEval`` (its predictions and per-sequence cosines, reused);
    ``baselines``: name -> null baseline (``GateSession.baselines``); ``index``: the dataset's index."""
    from lvm import metrics as M
    from lvm.evaluation import predict

    view, ds = ev.view, ev.view.dataset
    cos = np.asarray(ev.cos, dtype=np.float64)
    worst, rand = pick(cos, n, seed)
    chosen = np.unique(np.concatenate([worst, rand]))
    base_name = best_baseline(ev, baselines, profile) if baselines else None
    pred = np.asarray(ev.pred[chosen], dtype=np.float32)
    base_cos = (
        M.rowwise_cos(
            predict(getattr(baselines[base_name], "model", baselines[base_name]), view, chosen), ev.target[chosen]
        )
        if base_name
        else np.full(len(chosen), np.nan)
    )
    ctx_rows = view.context_indices(chosen)  # [B, ctx], -1 = padding; the last slot is always real
    targets = view.target_indices(chosen)
    cos_last = M.rowwise_cos(pred, ds.vectors, b_rows=ctx_rows[:, -1])
    found = _nearest(index, pred, nprobe)
    texts, canon, articles = ds.texts, ds.duplicate_canon, ds.article_id
    titles = _titles(ds)
    by_seq = {}
    for j, i in enumerate(chosen.tolist()):
        t, art = int(targets[j]), int(articles[targets[j]])
        rows = [int(r) for r in found[j] if r >= 0]
        near_cos = M.rowwise_cos(np.repeat(pred[j : j + 1], len(rows), axis=0), ds.vectors, b_rows=np.array(rows))
        near = sorted(zip(near_cos.tolist(), rows, strict=True), key=lambda p: -p[0])
        nearest = [
            {
                "text": texts[r],
                "article_id": str(int(articles[r])),
                "cosine": float(c),
                "same_article": int(articles[r]) == art,
                "chunk": r,
                "is_target": bool(canon[r] == canon[t]),
            }
            for c, r in near
        ]
        top1 = near[0][1] if near else None
        category = categorize(
            float(cos[i]),
            float(cos_last[j]),
            top1,
            t,
            int(ctx_rows[j, -1]),
            bool(nearest and nearest[0]["same_article"]),
            canon,
        )
        by_seq[i] = {
            "article_id": str(art),
            "title": titles[art] if art < len(titles) else None,
            "target_position": int(ds.position[t]),
            "sequence": i,
            "context_texts": [texts[int(r)] for r in ctx_rows[j] if r >= 0],
            "target_text": texts[t],
            "cosine": float(cos[i]),
            "baseline_cosine": float(base_cos[j]),
            "cosine_to_last": float(cos_last[j]),
            "nearest": nearest,
            "hit": bool(nearest and nearest[0]["is_target"]),
            "category": category,
        }
    entry_worst = [by_seq[int(i)] for i in worst]
    entry_random = [by_seq[int(i)] for i in rand]
    counts = dict.fromkeys(CATEGORIES, 0)
    for s in entry_worst + entry_random:
        counts[s["category"]] += 1
    from lvm.report.results import json_safe

    return json_safe(
        {
            "baseline": base_name,
            "category_counts": counts,
            "counts_over": COUNTS_OVER,
            "sequences": len(view),
            "worst": entry_worst,
            "random": entry_random,
        }
    )


def _titles(ds) -> list:
    try:
        return [a.get("title") for a in ds.articles]
    except Exception:  # noqa: BLE001 - titles are a courtesy: a dataset without a readable table has none
        return []


# ----------------------------------------------------------------------------- parts and the file


def write_part(parts: Path, checkpoint: str, dataset, n: int, entry: dict) -> str:
    """One checkpoint's entry into the parts folder (beside the per-sequence files); returns its name."""
    name = "samples-" + hashlib.sha1(checkpoint.encode()).hexdigest()[:16] + ".json"
    part = {
        "checkpoint": checkpoint,
        "dataset": dataset.path.name,
        "dataset_fingerprint": dataset.content_hash,
        "n": n,
        "entry": entry,
    }
    (Path(parts) / name).write_text(json.dumps(part, allow_nan=False), encoding="utf-8")
    return name


def _fingerprint(dataset: str | Path | None) -> str | None:
    """The dataset's content hash from its meta.json (None when it cannot be read)."""
    from lvm.errors import LvmError
    from lvm.schemas import read_json

    try:
        meta = read_json(Path(dataset) / "meta.json", "a dataset's meta.json") if dataset else None
    except LvmError:
        return None
    value = meta.get("content_hash") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


class SampleLog:
    """The controller's collection of parts (their names arrive as JSON user properties) and the file."""

    def __init__(self, n: int):
        self.n = n
        self.parts: list[str] = []
        self.errors: dict[str, str] = {}
        self.path: Path | None = None
        self.error: str | None = None

    def add(self, text: str) -> None:
        prop = json.loads(text)
        if prop.get("file"):
            self.parts.append(prop["file"])
        elif prop.get("error"):
            self.errors[str(prop.get("checkpoint"))] = str(prop["error"])

    def document(self, parts_dir: Path, dataset: str | Path | None = None) -> dict:
        """The file's document; ``dataset`` (the first --dataset) names it when no part does."""
        checkpoints, name, fingerprint = {}, Path(dataset).name if dataset else None, _fingerprint(dataset)
        for name in self.parts:
            part = json.loads((Path(parts_dir) / name).read_text(encoding="utf-8"))
            checkpoints[part["checkpoint"]] = part["entry"]
            name, fingerprint = part["dataset"], part["dataset_fingerprint"]
        doc = {
            "schema": SCHEMA,
            "version": VERSION,
            "dataset": name,
            "dataset_fingerprint": fingerprint,
            "split": "val",
            "n": self.n,
            "seed": SEED,
            "counts_over": COUNTS_OVER,
            "category_rules": CATEGORY_RULES,
            "checkpoints": {k: checkpoints[k] for k in sorted(checkpoints)},
        }
        if self.errors:
            doc["errors"] = dict(sorted(self.errors.items()))
        return doc

    def write(self, results: Path, parts_dir: Path, dataset: str | Path | None = None) -> Path | None:
        """``<results stem>.samples.json``, atomically (the results writer's helper)."""
        from lvm.errors import LvmError
        from lvm.io import write_json_atomic

        target = samples_path(results)
        try:
            self.path = write_json_atomic(target, self.document(parts_dir, dataset))
        except (OSError, LvmError, ValueError) as exc:
            self.error = f"samples file not written: {exc}"
        return self.path

    def summary(self) -> str | None:
        if self.error:
            return f"ERROR: {self.error}"
        if self.path is None:
            return None
        line = f"samples: {self.path} ({self.n} worst + {self.n} random per checkpoint)"
        if not self.parts:
            line += "; none recorded: no val_cosine gate of a checkpoint ran on the first --dataset"
        if self.errors:
            line += "; not recorded for " + ", ".join(f"{k} ({v})" for k, v in sorted(self.errors.items()))
        return line

"""``lvm calibrate``: a gate profile for a new encoder or corpus, measured rather than guessed.

The reference (a healthy model, any ``--checkpoint`` spec), the null baselines and generated broken
controls are scored on the dataset's own sequences with the real gate functions:

- ``copy_last``: copies its last input (the runbooks' copying failure);
- ``constant``: one vector for every input (collapse);
- ``shifted``: predicts the chunk after the target (off by one);
- ``shuffled_context``: the reference fed contexts of other articles (context ignored/misaligned).

Every model-gate rule of the base profile is placed between the reference's value and the nearest
broken value on the wrong side of it (GREEN down to a quarter of the gap, AMBER to half, RED beyond),
with the measured values written beside it as comments; rules no control crosses keep the base
threshold. The profile is refused when a broken control turns no rule RED (the gates could not
tell it from the reference), or when the reference itself would not be GREEN.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lvm import gates
from lvm.errors import LvmError
from lvm.evaluation import ModelEval
from lvm.gates.status import GREEN, RED, gate_params
from lvm.profiles import Profile, load_profile

CONTROLS = ("copy_last", "constant", "shifted", "shuffled_context")
ALL = CONTROLS
# Which failures each rule exists for (GATES.md): its threshold is placed against those controls only,
# so a rule is not squeezed against a failure another gate catches (copy-last retrieves almost as well as
# a healthy model; a collapse floor is not there to catch copying).
RESPONSIBLE = {
    ("val_cosine", "val_cosine"): ("constant", "shuffled_context"),
    ("ood_cosine", "ood_cosine"): ("constant", "shuffled_context"),
    # minimum effect sizes (margin over the baselines, forward margin) keep the base profile's values: a
    # threshold a quarter of the way to a distant control would fall below zero and pass the context mean
    ("offset_sweep", "copy_gap"): ("copy_last",),
    ("no_collapse", "margin"): ("constant", "shuffled_context"),
    ("no_collapse", "mean_pairwise_cos"): ("constant",),
    ("retrieval", "contain_at_50"): ("constant", "shuffled_context"),
    ("retrieval", "contain_at_50_vs_baseline"): ("constant", "shuffled_context", "shifted"),
    ("retrieval", "r_at_5_vs_baseline"): ("constant", "shuffled_context", "shifted"),
    ("retrieval", "eff_at_5_vs_baseline"): ("constant", "shuffled_context", "shifted"),
    ("context_ablations", "delta_cross_article"): ("constant",),
}
MIN_GAP = 0.01  # a control closer to the reference than this is not separated by the rule (noise between runs)
CALIBRATED_GATES = (
    "val_cosine",
    "ood_cosine",
    "beats_baselines",
    "offset_sweep",
    "no_collapse",
    "retrieval",
    "context_ablations",
)


class Constant(nn.Module):
    """The same unit vector for every input: the collapse control."""

    def __init__(self, vector: np.ndarray):
        super().__init__()
        self.register_buffer("v", torch.from_numpy(np.asarray(vector, dtype=np.float32)))

    def forward(self, x, mask=None):
        return self.v.expand(x.shape[0], -1)


class ShuffledContext(nn.Module):
    """The reference fed the contexts of other sequences of the batch (another article's chunks)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask):
        # half a batch away: neighbouring sequences share an article, these almost never do
        perm = torch.roll(torch.arange(x.shape[0]), max(1, x.shape[0] // 2))
        return self.inner(x[perm], mask[perm])


@dataclass
class Measured:
    """Gate results per model name, per (gate, split)."""

    results: dict[str, dict[tuple[str, str | None], gates.GateResult]] = field(default_factory=dict)

    def value(self, name: str, gate: str, split: str | None, metric: str):
        r = self.results.get(name, {}).get((gate, split))
        v = (r.metrics if r else {}).get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else None


def _evals(model, views: dict, name: str) -> dict:
    return {split: ModelEval(model, view, name) for split, view in views.items()}


def _controls(ds, reference, views: dict) -> dict[str, dict]:
    """The broken controls as ModelEvals on val and OOD."""
    from lvm.models.baselines import CopyLast

    mean = np.zeros(ds.dim)
    for start in range(0, ds.n_chunks, 65536):
        mean += np.asarray(ds.vectors[start : start + 65536], dtype=np.float64).sum(axis=0)
    mean /= max(np.linalg.norm(mean), 1e-12)
    out = {
        "copy_last": _evals(CopyLast(), views, "copy_last"),
        "constant": _evals(Constant(mean), views, "constant"),
        "shuffled_context": _evals(ShuffledContext(reference), views, "shuffled_context"),
    }
    shifted = _evals(reference, views, "shifted")
    for ev in shifted.values():
        nxt = np.minimum(ev.view.targets + 1, ds.n_chunks - 1)
        ev.use_predictions(np.asarray(ds.vectors[nxt], dtype=np.float32))  # one step ahead of the target
        ev.model = None  # predictions only: nothing to call
    out["shifted"] = shifted
    return out


def _score(evs: dict, baselines: dict, index, profile: Profile) -> dict[tuple[str, str | None], gates.GateResult]:
    val, ood = evs["val"], evs["ood"]
    res: dict[tuple[str, str | None], gates.GateResult] = {
        ("val_cosine", "val"): gates.cosine_gate("val_cosine", val, profile, baselines=baselines),
        ("ood_cosine", "ood"): gates.cosine_gate("ood_cosine", ood, profile, other=val, baselines=baselines),
        ("beats_baselines", "val"): gates.beats_baselines(val, baselines, profile),
        ("beats_baselines", "ood"): gates.beats_baselines(ood, baselines, profile),
        ("offset_sweep", "val"): gates.offset_sweep(val, profile),
        ("offset_sweep", "ood"): gates.offset_sweep(ood, profile),
        ("no_collapse", "val"): gates.no_collapse(val, profile),
        ("retrieval", "val"): gates.retrieval(val, index, profile, baselines=baselines),
    }
    if val.callable:
        res[("context_ablations", "val")] = gates.context_ablations(val, profile)
    return res


def measure(dataset, reference_spec: str, base: Profile, controls=CONTROLS, log=print) -> tuple[Measured, dict]:
    """Score the reference, the null baselines and the broken controls with the base profile's gates."""
    from lvm.data.index import load_or_build_index
    from lvm.models.adapters import load_model
    from lvm.models.baselines import null_baselines

    loaded = load_model(reference_spec)
    if loaded.predictor is None:
        raise LvmError(
            f"{reference_spec}: calibration needs a model it can call (the shuffled-context control runs it)"
        )
    card = loaded.card
    if card.input_dim != dataset.dim:
        raise LvmError(f"{reference_spec}: a {card.input_dim}-D model cannot be calibrated on {dataset.dim}-D data")
    views = {s: dataset.sequences(s, card.ctx, card.gated_min_ctx) for s in ("val", "ood")}
    for s, v in views.items():
        if not len(v):
            raise LvmError(
                f"{dataset.path}: no {s} sequences at ctx {card.ctx}; calibration needs val and OOD sequences"
            )
    log(
        f"calibrating on {dataset.path}: val {len(views['val'])}, ood {len(views['ood'])} sequences; "
        "fitting the null baselines"
    )
    baselines = null_baselines(
        dataset, card.ctx, card.gated_min_ctx, gate_params(base, "beats_baselines")["ridge_fit_sample"]
    )
    index, _ = load_or_build_index(dataset)
    measured = Measured()
    measured.results["reference"] = _score(_evals(loaded.predictor, views, "reference"), baselines, index, base)
    broken = _controls(dataset, loaded.predictor, views)
    for name in controls:
        if name not in broken:
            raise LvmError(f"unknown broken control {name!r}; choose from {', '.join(CONTROLS)}")
        log(f"  scoring the {name} control")
        measured.results[name] = _score(broken[name], baselines, index, base)
    return measured, {"card": card.to_dict(), "views": {s: len(v) for s, v in views.items()}}


def _placed(rule: dict, healthy: float, broken: dict[str, float]) -> tuple[dict, str]:
    """The rule with its thresholds placed between healthy and the nearest broken value on the wrong side."""
    higher = "min_green" in rule
    worse = {n: b for n, b in broken.items() if (b < healthy if higher else b > healthy)}
    notes = ", ".join(f"{n} {b:.4g}" for n, b in sorted(broken.items()))
    if not worse:
        return rule, f"reference {healthy:.4g}; no control on the wrong side ({notes}): base threshold kept"
    name, nearest = min(worse.items(), key=lambda kv: abs(kv[1] - healthy))
    gap = healthy - nearest
    if abs(gap) < MIN_GAP:
        return (
            rule,
            f"reference {healthy:.4g}, {name} {nearest:.4g}: closer than {MIN_GAP}, base threshold kept ({notes})",
        )
    new = {k: v for k, v in rule.items() if k not in ("min_green", "min_amber", "max_green", "max_amber")}
    prefix = "min" if higher else "max"
    new[f"{prefix}_green"] = _round(healthy - 0.25 * gap)
    new[f"{prefix}_amber"] = _round(healthy - 0.5 * gap)
    return new, f"reference {healthy:.4g}, nearest broken {name} {nearest:.4g} ({notes})"


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def place_thresholds(measured: Measured, base: Profile) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """New [gates.X] tables for the calibrated gates, and the comments (measured values) per gate."""
    tables, comments = {}, {}
    controls = [n for n in measured.results if n != "reference"]
    for gate in CALIBRATED_GATES:
        table = dict(base.gate(gate))
        rules, notes = [], []
        for rule in table.get("rules", []):
            splits = (
                [rule["split"]] if rule.get("split") else [s for g, s in measured.results["reference"] if g == gate]
            )
            healthy = [measured.value("reference", gate, s, rule["metric"]) for s in splits]
            healthy = [h for h in healthy if h is not None]
            if not healthy or rule.get("worst") == "AMBER":
                rules.append(rule)
                notes.append(f"{rule['metric']}: kept ({'report-only rule' if healthy else 'not measured'})")
                continue
            h = min(healthy) if "min_green" in rule else max(healthy)
            responsible = RESPONSIBLE.get((gate, rule["metric"]), ())
            if not responsible:
                rules.append(rule)
                notes.append(f"{rule['metric']}: kept (no broken control is this rule's failure)")
                continue
            broken = {}
            for c in (c for c in controls if c in responsible):
                vals = [measured.value(c, gate, s, rule["metric"]) for s in splits]
                vals = [v for v in vals if v is not None]
                if vals:
                    broken[c] = max(vals) if "min_green" in rule else min(vals)
            new, note = _placed(rule, h, broken)
            rules.append(new)
            notes.append(f"{rule['metric']}: {note}")
        table["rules"] = rules
        tables[gate], comments[gate] = table, notes
    return tables, comments


MARGIN_ROWS = (
    ("val_cosine", "val", "margin_vs_baseline"),
    ("ood_cosine", "ood", "margin_vs_baseline"),
    ("val_cosine", "val", "val_cosine"),
    ("ood_cosine", "ood", "ood_cosine"),
    ("offset_sweep", "val", "copy_gap"),
    ("no_collapse", "val", "margin"),
    ("retrieval", "val", "contain_at_50_vs_baseline"),
)


def margin_table(measured: Measured) -> list[str]:
    """The measured margins of the reference and every control, one line each (what a refusal prints)."""
    names = list(measured.results)
    lines = ["measured (reference and controls):", "  " + " ".join(f"{n:>17}" for n in ["metric", *names])]
    for gate, split, metric in MARGIN_ROWS:
        cells = [measured.value(n, gate, split, metric) for n in names]
        lines.append(
            "  "
            + f"{gate + '.' + metric + '/' + split:>17.17}"
            + "".join(f" {'-' if v is None else f'{v:+.4f}':>17}" for v in cells)
        )
    return lines


def margin_summary(measured: Measured) -> str:
    """``name val/OOD`` margins over the best null baseline, for the one-line refusal."""

    def cell(v):
        return "-" if v is None else f"{v:+.4f}"

    return ", ".join(
        f"{n} {cell(measured.value(n, 'val_cosine', 'val', 'margin_vs_baseline'))}/"
        f"{cell(measured.value(n, 'ood_cosine', 'ood', 'margin_vs_baseline'))}"
        for n in measured.results
    )


def check_separation(measured: Measured, profile: Profile) -> list[str]:
    """Problems: a control that no rule turns RED, or a reference that is not GREEN, under ``profile``."""
    problems = []
    rescored = {}
    for name, results in measured.results.items():
        statuses = {}
        for (gate, split), r in results.items():
            if gate not in CALIBRATED_GATES:
                continue
            statuses[(gate, split)] = gates.judge(gate, r.metrics, profile, split=split).status
        rescored[name] = statuses
    bad_ref = [f"{g}/{s}" for (g, s), st in rescored["reference"].items() if st != GREEN]
    if bad_ref:
        problems.append(f"the reference is not GREEN under the calibrated profile at {', '.join(bad_ref)}")
    for name, statuses in rescored.items():
        if name != "reference" and RED not in statuses.values():
            problems.append(f"the {name} control is not separated from the reference: no gate turns it RED")
    return problems


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, int) or math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise LvmError(f"cannot write {type(v).__name__} to TOML")


def render_profile(name: str, base: Profile, dataset, tables: dict, comments: dict, info: dict) -> str:
    from lvm.profiles import _model_id

    model_id = _model_id(dataset.meta)
    lines = [
        f"# Calibrated by `lvm calibrate` on {dataset.path} ({dataset.n_chunks:,} chunks, {dataset.dim}-D) with",
        f"# reference {info['card']['source']} ({info['card']['type']});",
        f"# val {info['views']['val']:,} / OOD {info['views']['ood']:,} sequences.",
        "# Each rule sits between the reference and the nearest broken control on the wrong side of it",
        "# (GREEN within a quarter of the gap, AMBER to half, RED beyond); measured values are beside each gate.",
        "[profile]",
        f"name = {_toml_value(name)}",
        "version = 1",
        f"extends = {_toml_value(base.name)}",
        f"dim = {dataset.dim}",
        f"encoders = {_toml_value([model_id] if model_id else [])}",
        f"description = {_toml_value('calibrated for ' + str(dataset.path.name))}",
        "",
    ]
    for gate, table in tables.items():
        lines.append(f"[gates.{gate}]")
        lines += [f"# {c}" for c in comments.get(gate, [])]
        for k, v in table.items():
            if k != "rules":
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("rules = [")
        lines += [f"  {_toml_value(r)}," for r in table.get("rules", [])]
        lines += ["]", ""]
    return "\n".join(lines)


def calibrate(
    dataset_path,
    reference: str,
    out: str | Path,
    base_name: str | None = None,
    controls=CONTROLS,
    name: str | None = None,
    log=print,
    seeds: int = 0,
) -> Path:
    """Measure, place, check, write ``out`` (atomically); ``LvmError`` when the controls do not separate.

    With ``seeds`` (≥ 2) the reference run is also retrained that many times with other seeds and the
    spread of its val and OOD cosine is written to the profile's ``[regression]`` table, where it sets
    the regression check's minimum effect."""
    import tomllib

    from lvm.data.datasets import open_dataset
    from lvm.io import write_text_atomic
    from lvm.profiles import profile_for_dataset

    ds = open_dataset(dataset_path)
    out = Path(out)
    if out.suffix != ".toml":
        raise LvmError(f"{out}: a profile is written as NAME.toml")
    base = load_profile(base_name) if base_name else _base_for(ds, profile_for_dataset)
    measured, info = measure(ds, reference, base, controls, log)
    tables, comments = place_thresholds(measured, base)
    name = name or out.stem
    text = render_profile(name, base, ds, tables, comments, info)
    if seeds:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix=".lvm-seeds-", dir=out.parent if out.parent.is_dir() else None))
        try:
            text += "\n" + render_regression(base, seed_spread(ds, reference, seeds, work, log))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    data = tomllib.loads(text)
    merged = {**base.data, "profile": data["profile"], "gates": {**base.data.get("gates", {}), **data["gates"]}}
    if "regression" in data:
        merged["regression"] = data["regression"]
    problems = check_separation(measured, Profile(name, 1, out, merged))
    if problems:
        for line in margin_table(measured):  # the numbers behind the refusal: how far off the reference is
            log(line)
        raise LvmError(
            f"calibration refused: {problems[0]}"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
            + f"; margins over the best null baseline (val/OOD): {margin_summary(measured)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    load_profile(str(out))  # what was written loads and validates
    return out


def _training_config(reference: str) -> dict:
    """The training settings of an lvm run (its ``config.json``, or the ``training`` table of a
    checkpoint's NAME.json): what ``--seeds`` retrains."""
    from lvm.schemas import read_json

    path = Path(reference)
    src = path / "config.json" if path.is_dir() else path
    try:  # unreadable, not JSON, nested too deep: one line
        data = read_json(src, "the reference's training config") if src.suffix == ".json" and src.is_file() else None
    except LvmError as exc:
        raise LvmError(f"cannot read the reference's training config: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("training"), dict):
        data = data["training"]
    if not isinstance(data, dict) or "model" not in data:
        raise LvmError(
            f"{reference}: --seeds retrains the reference, so it must be an lvm run folder or checkpoint "
            "(its config.json holds the training settings)"
        )
    return data


def seed_spread(dataset, reference: str, seeds: int, work: Path, log=print) -> dict:
    """Retrain the reference ``seeds`` times with other seeds on ``dataset`` and measure the run-to-run
    spread of what the regression check compares per sequence: the mean val and OOD cosine (on the
    gates' own sequences). Returns ``{"values": {gate: [reference, retrain 1, ...]}, "spread": {gate:
    sample sd}, "seeds": [...]}``."""
    from lvm.models.adapters import load_model
    from lvm.train.config import TrainConfig
    from lvm.train.trainer import Trainer

    if seeds < 2:
        raise LvmError(f"--seeds {seeds}: the spread needs at least 2 retrains")
    cfg = _training_config(reference)
    ref_seed = int(cfg.get("seed", 0) or 0)
    values: dict[str, list[float]] = {"val_cosine": [], "ood_cosine": []}

    def score(spec: str) -> None:
        loaded = load_model(spec)
        card = loaded.card
        for gate, split in (("val_cosine", "val"), ("ood_cosine", "ood")):
            view = dataset.sequences(split, card.ctx, card.gated_min_ctx)
            values[gate].append(float(np.mean(ModelEval(loaded.predictor, view, "seed").cos)))

    score(reference)
    used = []
    for i in range(1, seeds + 1):
        seed = ref_seed + i
        run = work / f"seed-{seed}"
        log(f"  retraining the reference with seed {seed} ({i}/{seeds})")
        Trainer(TrainConfig.from_dict({**cfg, "seed": seed, "dataset": str(dataset.path)}), run, progress=False).run()
        score(str(run))
        used.append(seed)
    spread = {g: float(np.std(v, ddof=1)) for g, v in values.items()}
    return {"values": values, "spread": spread, "seeds": [ref_seed, *used]}


def render_regression(base: Profile, spread: dict, factor: float | None = None) -> str:
    """The ``[regression]`` table of a calibrated profile: the base's tolerances plus the measured
    run-to-run spread and the minimum effect it implies (``factor`` × spread)."""
    from lvm.report.regression import MIN_EFFECT_FACTOR

    table = dict(base.data.get("regression") or {})
    table.pop("min_effect", None)
    factor = float(factor or table.get("min_effect_factor", MIN_EFFECT_FACTOR))
    lines = [
        "[regression]",
        f"# run-to-run spread: sd of the mean cosine over {len(spread['seeds'])} trainings of the reference "
        f"(seeds {', '.join(map(str, spread['seeds']))}):",
    ]
    lines += [f"#   {g}: {', '.join(f'{v:.5f}' for v in vals)}" for g, vals in spread["values"].items()]
    lines.append(f"# a drop counts as a regression beyond {factor:g} x that spread (and significant)")
    table["seed_spread"] = {g: float(f"{v:.3g}") for g, v in spread["spread"].items()}
    table["spread_seeds"] = len(spread["seeds"])
    table["min_effect_factor"] = factor
    table["min_effect"] = {g: float(f"{factor * v:.3g}") for g, v in spread["spread"].items()}
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _base_for(ds, profile_for_dataset) -> Profile:
    """The dataset's own profile if one fits, else the default profile of its dimension's family."""
    try:
        return profile_for_dataset(ds.meta)
    except LvmError:
        return load_profile("minilm-wiki-vital" if ds.dim == 384 else "gtr-t5-wiki")

"""The gate suite's session state: everything its fixtures load once per pytest session (datasets,
indexes, profiles, models, predictions, views, null baselines), and the checkpoints it gates, each
with its name (``lvm.report.recorder``: NAME=, else its model card's). The pytest plugin
(``lvm.pytest_plugin``) makes one ``GateSession`` per session and its fixtures read it.
"""

from __future__ import annotations


def model_entries(config) -> list[tuple[str | None, str]]:
    """``(NAME or None, spec)`` of every model to gate: checkpoints (any spec, ``NAME=SPEC`` too) then
    predictions folders (``predictions:DIR``)."""
    from lvm.report.recorder import PREDICTIONS, split_name

    entries = [split_name(c) for c in config.getoption("--checkpoint")]
    for name, folder in map(split_name, config.getoption("--predictions")):
        entries.append((name, PREDICTIONS + folder))
    return entries


def model_specs(config) -> list[str]:
    """Every model to gate, as the loaders read it (without its NAME=)."""
    return [spec for _, spec in model_entries(config)]


class GateSession:
    """Everything loaded once per session: datasets, indexes, profiles, models, predictions, baselines."""

    def __init__(self, config):
        from lvm.report.recorder import checkpoint_names

        self.config = config
        self._cache: dict = {}
        # spec -> name known before loading (NAME=, else the card's, read from JSON); NameClash on two alike
        self.names = checkpoint_names(model_entries(config), config.getoption("--model-card"))

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def dataset(self, path):
        from lvm.data.datasets import open_dataset

        return self._once(("ds", str(path)), lambda: open_dataset(path))

    def profile(self, ds):
        from lvm.profiles import profile_for_dataset

        return self._once(
            ("profile", str(ds.path)), lambda: profile_for_dataset(ds.meta, self.config.getoption("--gate-profile"))
        )

    def index(self, ds):
        from lvm.data.index import load_or_build_index

        return self._once(("index", str(ds.path)), lambda: load_or_build_index(ds)[0])

    def ood_view(self, ds, ctx, min_ctx):
        """The OOD sequences: every sequence of a separate --ood-dataset (all its splits: it is out of
        distribution as a whole; --ood-split narrows it), else the dataset's own OOD split. The
        cosine gates record which dataset and split they scored."""
        from lvm.data.datasets import ALL_SPLITS

        other = self.config.getoption("--ood-dataset")
        if not other:
            return ds.sequences("ood", ctx, min_ctx)
        return self.dataset(other).sequences(self.config.getoption("--ood-split") or ALL_SPLITS, ctx, min_ctx)

    def space_verdict(self, ds, gate: str):
        """The ``encoder_fingerprint`` or ``normalization`` result of a dataset, computed once: the data
        gates record it, and a RED one stops that dataset's model gates (``space_broken``)."""
        from lvm import gates

        def make():
            profile = self.profile(ds)
            if gate == "normalization":
                return gates.normalization(ds, profile)
            fps = {}
            for spec in model_specs(self.config):
                loaded, _ = self.model(spec)
                if loaded is not None and loaded.card.encoder_fingerprint is not None:
                    fps[loaded.card.source or spec] = loaded.card.encoder_fingerprint
            return gates.encoder_fingerprint(ds, profile, fps)

        return self._once(("space", gate, str(ds.path)), make)

    def space_broken(self, ds) -> str | None:
        """Why the dataset's vectors are not the space its models read (a RED ``encoder_fingerprint`` or
        ``normalization``), or None: model verdicts on such vectors would name wrong causes."""
        for gate in ("encoder_fingerprint", "normalization"):
            r = self.space_verdict(ds, gate)
            if r.status == "RED":
                why = (r.message or "").split(". Likely cause")[0]
                return f"{gate} is RED on {ds.path.name}, so its model gates were not run: {why[:300]}"
        return None

    def label(self, spec: str) -> str:
        """The name a checkpoint has before it is loaded (its pytest id): NAME=, its card's, else its path's."""
        from lvm.report.recorder import path_label

        return self.names.get(spec) or path_label(spec)

    def name(self, spec: str) -> str:
        """The checkpoint's name in every row: its card's once loaded (a ``py:`` factory's own card), else ``label``."""
        loaded = self._cache.get(("model", spec), (None, None))[0]
        return loaded.card.name if loaded is not None else self.label(spec)

    def model(self, spec: str):
        """``(LoadedModel or None, load error or None)`` for a checkpoint spec, loaded once; its card
        carries the checkpoint's name (NAME= wins over the card's own)."""
        from lvm.errors import LvmError
        from lvm.models.adapters import load_model, parse_model_args
        from lvm.models.predictions import load_predictions
        from lvm.report.recorder import clash

        def make():
            card = self.config.getoption("--model-card")
            try:
                if spec.startswith("predictions:"):
                    loaded = load_predictions(spec.removeprefix("predictions:"), None)
                else:
                    loaded = load_model(
                        spec,
                        card if (spec.startswith("py:") or spec.endswith(".pt2")) else None,
                        model_args=parse_model_args(self.config.getoption("--model-args")),
                    )
            except LvmError as exc:
                return None, str(exc)
            name = self.names.get(spec) or loaded.card.name
            taken = {self.name(other): other for other in self.names if other != spec}
            if name in taken:  # a py: factory's card names it like another checkpoint
                return None, clash(name, taken[name], spec)
            loaded.card.name = name
            return loaded, None

        return self._once(("model", spec), make)

    def integrity(self, spec: str, ds):
        """The checkpoint_integrity result of a model on a dataset (computed once)."""
        from lvm.gates import checkpoint_integrity

        def make():
            loaded, error = self.model(spec)
            return checkpoint_integrity(
                loaded.card if loaded else None, ds, self.profile(ds), self.name(spec), load_error=error
            )

        return self._once(("integrity", spec, str(ds.path)), make)

    def model_eval(self, spec: str, ds, split: str):
        """The ``ModelEval`` of a model on one split (None when it has no such sequences)."""
        from lvm.evaluation import ModelEval
        from lvm.models.predictions import check_alignment

        def make():
            loaded, _ = self.model(spec)
            card = loaded.card
            view = self.view(ds, split, card.ctx, card.gated_min_ctx)
            if not len(view):
                return None
            ev = ModelEval(loaded.predictor, view, card.name, card=card)
            if not loaded.callable:
                if split not in loaded.predictions:
                    return None
                check_alignment(loaded, view, spec.removeprefix("predictions:"))
                ev.use_predictions(loaded.predictions[split])
            return ev

        return self._once(("eval", spec, str(ds.path), split), make)

    def samples(self, spec: str, ds, n: int) -> dict | None:
        """The ``--log-samples`` entry of a model on the dataset's val split (``lvm.report.samples``),
        from its cached val predictions and cosines, baselines and index: no model runs twice."""
        from lvm.report.samples import collect

        ev = self.model_eval(spec, ds, "val")
        if ev is None:
            return None
        base = self.baselines(ds, ev.view.ctx, ev.view.min_ctx)
        return collect(ev, base, self.index(ds), self.profile(ds), n, self.config.getoption("--nprobe"))

    def data_contexts(self, ds) -> list[tuple[int, int]]:
        """The (ctx, min_ctx) pairs of the models being gated on ``ds`` (else the profile's)."""
        from lvm.gates.status import gate_params

        pairs = []
        for spec in model_specs(self.config):
            loaded, _ = self.model(spec)
            if loaded is not None and (loaded.card.ctx, loaded.card.gated_min_ctx) not in pairs:
                pairs.append((loaded.card.ctx, loaded.card.gated_min_ctx))
        declared = ds.meta.get("sequences") if isinstance(ds.meta.get("sequences"), dict) else None
        if not pairs and declared and isinstance(declared.get("ctx"), int) and isinstance(declared.get("min_ctx"), int):
            pairs.append((declared["ctx"], declared["min_ctx"]))  # imported full-context windows: their own ctx
        if not pairs:
            p = gate_params(self.profile(ds), "alignment")
            pairs.append((int(p["ctx"]), int(p["min_ctx"])))
        return pairs

    def baselines(self, ds, ctx, min_ctx):
        """The null baselines (copy-last, context mean, ridge fitted once per dataset and context)."""
        from lvm.gates.status import gate_params
        from lvm.models.baselines import null_baselines

        n_fit = gate_params(self.profile(ds), "beats_baselines")["ridge_fit_sample"]
        return self._once(("baselines", str(ds.path), ctx, min_ctx), lambda: null_baselines(ds, ctx, min_ctx, n_fit))

    def view(self, ds, split, ctx, min_ctx):
        """One SequenceView per (dataset, split, ctx, min_ctx): models on it share its target vectors."""
        make = (
            (lambda: self.ood_view(ds, ctx, min_ctx)) if split == "ood" else (lambda: ds.sequences(split, ctx, min_ctx))
        )
        return self._once(("view", str(ds.path), split, ctx, min_ctx), make)

"""The ``lvm`` command line: build-data, inspect, import-npz, build-index, fingerprint, train, evaluate,
leaderboard, compare, synth, coherence, filter.

Every subcommand turns bad input into one line on stderr and a non-zero exit (2), never a
traceback; outputs appear atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lvm.bounds import COUNT, CTX, DIM, SEED, number
from lvm.errors import LvmError

DEFAULT_DATASET = "data/wiki-minilm"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``lvm: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"lvm: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    from lvm.data.encoders import (
        BACKENDS,
        DEFAULT_BACKEND,
        DEFAULT_ENCODER,
        MAX_MAX_LENGTH,
        MIN_MAX_LENGTH,
        POOLING_MODES,
    )

    g = p.add_argument_group("encoder")
    g.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="sentence-transformers model name or local folder (default: the packaged %(default)s)",
    )
    g.add_argument(
        "--pooling", choices=POOLING_MODES, default=None, help="override the model's pooling (changes the vector space)"
    )
    g.add_argument(
        "--no-normalize", action="store_true", help="keep raw (non-unit) vectors; the normalization gate will flag them"
    )
    g.add_argument(
        "--max-length",
        type=number(int, MIN_MAX_LENGTH, MAX_MAX_LENGTH),
        default=None,
        help="override the model's max sequence length (tokens, special tokens included; at most what the model's "
        "position table holds, 512 for MiniLM)",
    )
    g.add_argument(
        "--encoder-backend",
        choices=BACKENDS,
        default=None,
        help=f"run the transformer with PyTorch or with ONNX Runtime (exported once, cached in ~/.cache/lvm/onnx or "
        f"$LVM_CACHE_DIR/onnx); a different backend is a different fingerprint (default: {DEFAULT_BACKEND} for "
        f"the packaged {DEFAULT_ENCODER}, where it agrees with torch, torch for other models)",
    )


def _encoder_spec(args):
    from lvm.data.encoders import EncoderSpec

    return EncoderSpec(
        name=args.encoder,
        pooling=args.pooling,
        normalize=not args.no_normalize,
        max_length=args.max_length,
        backend=args.encoder_backend,
    )


def _add_split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("splits (article-disjoint)")
    g.add_argument(
        "--ood",
        choices=("id-range", "topics", "none"),
        default="id-range",
        help="OOD policy: last articles by id (the seeds' way), held-out topics, or none",
    )
    g.add_argument(
        "--ood-fraction",
        type=number(float, 0.0, 0.9),
        default=0.1,
        help="share of articles in OOD for id-range (default %(default)s)",
    )
    g.add_argument("--ood-topics", default="", help="comma-separated topics held out as OOD (with --ood topics)")
    g.add_argument(
        "--val-fraction",
        type=number(float, 0.0, 0.9),
        default=0.1,
        help="share of the remaining articles in val (default %(default)s)",
    )
    g.add_argument("--seed", type=SEED, default=0, help="split seed (default %(default)s)")


def _split_policy(args):
    from lvm.data.splits import SplitPolicy

    topics = tuple(t.strip() for t in args.ood_topics.split(",") if t.strip())
    return SplitPolicy(
        ood=args.ood, ood_fraction=args.ood_fraction, ood_topics=topics, val_fraction=args.val_fraction, seed=args.seed
    )


def cmd_build_data(args) -> int:
    from lvm.data.build import BuildConfig, build_dataset
    from lvm.data.chunking import ChunkerConfig

    cfg = BuildConfig(
        corpus=args.corpus,
        encoder=_encoder_spec(args),
        chunker=ChunkerConfig(min_chars=args.min_chars, target_chars=args.target_chars),
        split=_split_policy(args),
        index_kind=args.index,
        nlist=args.nlist,
        nprobe=args.nprobe,
        batch_size=args.batch_size,
        max_articles=args.max_articles,
        engine=args.engine,
        workers=args.workers,
        shard_chunks=args.shard_chunks,
    )
    res = build_dataset(
        cfg, args.out, force=args.force, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr)
    )
    c = res.meta["counts"]
    print(
        f"{res.path}: {c['chunks']} chunks, {c['articles']} articles, dim {res.meta['dim']}, "
        f"train/val/ood articles {c['train_articles']}/{c['val_articles']}/{c['ood_articles']} "
        f"({res.seconds['total']:.1f} s{', reused' if res.reused == 'dataset' else ''})"
    )
    if "encode" in res.seconds:
        print(f"encoded at {res.seconds['encode_chunks_per_s']:.0f} chunks/s")
    return 0


def _encoder_summary(meta: dict) -> dict:
    """Model id, pooling, normalization, max length and fingerprint; imported/synthetic data may lack some."""
    enc = meta.get("encoder") or {}
    pipe = enc.get("pipeline") or {}
    out = {k: pipe.get(k) for k in ("model_id", "pooling", "normalize", "max_length")}
    out["model_id"] = out["model_id"] or (enc.get("spec") or {}).get("name")
    out["fingerprint"] = enc.get("fingerprint")
    return out


def inspect_dataset(path: str, ctx: int, min_ctx: int) -> dict:
    from lvm.data.datasets import open_dataset
    from lvm.data.splits import SPLIT_NAMES
    from lvm.metrics import coherence_summary, norm_summary

    ds = open_dataset(path)
    coh = ds.adjacency
    size = sum(f.stat().st_size for f in ds.path.iterdir() if f.is_file())
    corpus = ds.meta.get("corpus")
    return {
        "path": str(ds.path),
        "format_version": ds.meta["format_version"],
        "dim": ds.dim,
        "counts": ds.meta["counts"],
        "sequences": {s: len(ds.sequences(s, ctx, min_ctx)) for s in SPLIT_NAMES} | {"ctx": ctx, "min_ctx": min_ctx},
        "norms": norm_summary(ds.vectors),
        "coherence": coherence_summary(coh),
        "encoder": _encoder_summary(ds.meta),
        "corpus": corpus if isinstance(corpus, dict) else {},
        "split_policy": ds.meta.get("split_policy"),
        "index": _index_info(ds.path),
        "content_hash": ds.content_hash,
        "size_bytes": size,
        "view_of": str(ds.parent.path) if ds.parent is not None else None,
    }


def _index_info(folder: Path) -> dict | None:
    """The index parameters (``index.json``), None without an index, ``{"error": ...}`` when unreadable."""
    from lvm import schemas

    path = folder / "index.json"
    if not path.is_file():
        return None
    try:
        idx = schemas.read_json(path, "the index parameters")
    except LvmError as exc:
        return {"error": str(exc)}
    return idx if isinstance(idx, dict) else {"error": f"{path}: not a JSON object"}


def cmd_inspect(args) -> int:
    info = inspect_dataset(args.dataset, args.ctx, args.min_ctx)
    from lvm.schemas import nonfinite_path

    read = ("counts", "split_policy", "index", "corpus", "encoder", "format_version")  # what comes from files
    bad = nonfinite_path({k: info.get(k) for k in read})
    if bad:  # read from meta.json / index.json: lvm never wrote it, and JSON has no Infinity or NaN
        raise LvmError(f"{args.dataset}: {bad} is not a finite number (damaged meta.json or index.json)")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    s, n, h = info["sequences"], info["norms"], info["coherence"]
    c = {k: info["counts"].get(k, "?") for k in info["counts"]} | {
        k: info["counts"].get(k, "?") for s_ in ("train", "val", "ood") for k in (f"{s_}_articles", f"{s_}_chunks")
    }
    enc = info["encoder"]
    lines = [
        f"dataset      {info['path']}  ({info['size_bytes'] / 1e6:.1f} MB, format v{info['format_version']})",
        (
            f"encoder      {enc['model_id']}  pooling={enc['pooling']} normalize={enc['normalize']} "
            f"max_len={enc['max_length']}"
        ),
        f"fingerprint  {enc['fingerprint']}",
        *([f"view of     {info['view_of']}  (rows.npy: vectors and texts read through it)"] if info["view_of"] else []),
        f"corpus       {info['corpus'].get('name')}  split policy {info['split_policy']}",
        f"chunks       {c['chunks']} in {c['articles']} articles, dim {info['dim']}",
        (
            f"splits       train {c['train_articles']} art / {c['train_chunks']} chunks,  "
            f"val {c['val_articles']} / {c['val_chunks']},  ood {c['ood_articles']} / {c['ood_chunks']}"
        ),
        f"sequences    ctx={s['ctx']} min_ctx={s['min_ctx']}: train {s['train']}, val {s['val']}, ood {s['ood']}",
        (
            f"norms        mean {n['mean']:.6f}  std {n['std']:.2e}  min {n['min']:.6f}  max {n['max']:.6f}  "
            f"nonfinite {n['nonfinite']}  zero {n['zero']}"
        ),
    ]
    if h.get("n_pairs"):
        lines.append(
            f"coherence    {h['n_pairs']} adjacent pairs: mean {h['mean']:.4f}  std {h['std']:.4f}  p10/p50/p90 "
            f"{h['p10']:.3f}/{h['p50']:.3f}/{h['p90']:.3f}  low(<{h['low_threshold']:.2f}) {100 * h['low_share']:.1f}%"
        )
        lines.append("             " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in h["histogram"].items()))
    idx = info["index"]
    if not idx:
        lines.append("index        none (run `lvm build-index`)")
    elif "error" in idx:
        lines.append(f"index        unreadable ({idx['error']}; run `lvm build-index`)")
    else:
        g = idx.get
        lines.append(f"index        {g('kind')} ntotal={g('ntotal')} nlist={g('nlist')} nprobe={g('nprobe')}")
    print("\n".join(lines))
    return 0


def cmd_import_npz(args) -> int:
    from lvm.data.interop import import_npz

    res = import_npz(
        args.npz,
        args.out,
        split=_split_policy(args),
        encoder_name=args.encoder_name,
        index_kind=args.index,
        progress=not args.quiet,
    )
    c, imp = res["counts"], res["import"]
    if imp.get("layout") == "stream":
        how = (
            f"one chunk stream rebuilt; {imp['cross_article_windows']} windows cross articles and are not gated, "
            f"{imp['within_article_windows']} are"
        )
    else:
        how = f"{imp['duplicates_removed']} duplicate vectors merged"
    fp = (
        "fingerprint recorded"
        if (res.get("encoder") or {}).get("fingerprint")
        else "no fingerprint (encoder not installed)"
    )
    print(
        f"{args.out}: {c['chunks']} unique chunks from {imp['rows']} rows ({how}), {c['articles']} articles, "
        f"dim {res['dim']}, ctx {imp['ctx']}; {fp}"
    )
    return 0


def cmd_build_index(args) -> int:
    from lvm.data.datasets import open_dataset
    from lvm.data.index import build_and_save_index

    ds = open_dataset(args.dataset)
    t = time.perf_counter()
    _, params = build_and_save_index(
        ds.path,
        ds.vectors,
        ds.content_hash,
        kind=args.index,
        nlist=args.nlist,
        nprobe=args.nprobe,
        progress=not args.quiet,
    )
    print(
        f"{ds.path}/index.faiss: {params.kind} ntotal={params.ntotal} nlist={params.nlist} nprobe={params.nprobe} "
        f"({time.perf_counter() - t:.1f} s)"
    )
    return 0


def cmd_fingerprint(args) -> int:
    from lvm.data.encoders import load_encoder

    enc = load_encoder(_encoder_spec(args))
    if args.json:
        print(json.dumps({"fingerprint": enc.fingerprint, "pipeline": enc.pipeline}, indent=2))
    else:
        print(enc.fingerprint)
    return 0


def _contexts_the_data_declares(args) -> None:
    """Imported full-context windows declare their ctx and min_ctx (``meta.json`` "sequences"): unless
    --ctx / --min-ctx are given, train on those, never on shorter contexts the file never had."""
    import json

    given = getattr(args, "_argv", [])
    try:
        declared = json.loads((Path(args.dataset) / "meta.json").read_text()).get("sequences")
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        return  # the trainer refuses a bad dataset with its own one-line reason
    if not isinstance(declared, dict):
        return
    for key, flag in (("ctx", "--ctx"), ("min_ctx", "--min-ctx")):
        if isinstance(declared.get(key), int) and not any(a == flag or a.startswith(flag + "=") for a in given):
            setattr(args, key, declared[key])


def cmd_train(args) -> int:
    from lvm.train import EXIT_KILL_SWITCH, KillSwitch, TrainConfig, Trainer
    from lvm.train.config import config_from_args

    if args.resume:
        from lvm import schemas

        run = Path(args.resume)
        if not (run / "config.json").is_file():
            raise LvmError(f"nothing to resume in {run} (no config.json)")
        cfg = TrainConfig.from_dict(schemas.read_json(run / "config.json", "a run's config"), str(run / "config.json"))
        history = run / "training_history.json"
        schemas.validate(schemas.TrainingHistory, schemas.read_json(history, "a run's training history"), str(history))
        out, resume = run, True
    else:
        _contexts_the_data_declares(args)
        cfg = config_from_args(TrainConfig, args).check("lvm train options")
        out = Path(args.out or f"runs/{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        resume = False
    try:
        Trainer(cfg, out, resume=resume, progress=not args.quiet).run()
    except KillSwitch as ks:
        print(f"lvm: {ks}; run kept in {out}", file=sys.stderr)
        return EXIT_KILL_SWITCH
    if os.environ.get("RANK", "0") == "0":
        print(out)
    return 0


def cmd_evaluate(args) -> int:
    from lvm.data.datasets import open_dataset
    from lvm.evaluation import evaluate
    from lvm.models.checkpoints import (
        check_compatible,
        load_checkpoint,
        load_legacy_state_dict,
    )

    path = Path(args.checkpoint)
    if path.suffix in (".pt", ".pth", ".pkl", ".bin") and path.is_file():
        load_legacy_state_dict(path)  # refuses anything but plain tensors, without running code
    model, meta = load_checkpoint(args.checkpoint)
    ds = open_dataset(args.dataset)
    check_compatible(meta, ds)
    out = {"checkpoint": meta["_path"], "model_type": meta["model_type"], "dataset": str(ds.path)}
    for split in ("val", "ood"):
        view = ds.sequences(split, meta["ctx"], meta.get("min_ctx", 1))
        out[f"{split}_cosine"] = evaluate(model, view)["cosine"] if len(view) else None
        out[f"{split}_sequences"] = len(view)
    print(
        json.dumps(out, indent=2)
        if args.json
        else "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items())
    )
    return 0


def cmd_leaderboard(args) -> int:
    from lvm.report.leaderboard import leaderboard_main

    return leaderboard_main(args.results, args.out, args.samples)


def cmd_compare(args) -> int:
    from lvm.report.leaderboard import compare_main

    return compare_main(Path(args.new), Path(args.baseline), args.gate_profile, args.allow_missing)


def cmd_synth(args) -> int:
    from lvm.data.synth import Segment, SynthConfig, synth_dataset

    cfg = SynthConfig(
        n_chunks=args.n_chunks,
        dim=args.dim,
        mean_chunks_per_article=args.chunks_per_article,
        coherence=args.coherence,
        coherence_std=args.coherence_std,
        segments=tuple(Segment.parse(s) for s in args.segment),
        duplicate_fraction=args.duplicates,
        seed=args.seed,
    )
    t = time.perf_counter()
    meta = synth_dataset(cfg, args.out, _split_policy(args), progress=not args.quiet)
    c = meta["counts"]
    print(
        f"{args.out}: {c['chunks']} chunks x {meta['dim']}, {c['articles']} articles, "
        f"train/val/ood articles {c['train_articles']}/{c['val_articles']}/{c['ood_articles']} "
        f"({time.perf_counter() - t:.1f} s)"
    )
    return 0


def cmd_coherence(args) -> int:
    from lvm.triage import coherence_report, format_report, plot_histograms

    report = coherence_report(
        args.dataset,
        args.baseline,
        segment_width=args.segment_width,
        by="topic" if args.by_topic else "article_range",
        profile=args.gate_profile,
    )
    if args.png:
        plot_histograms(report, args.png)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_filter(args) -> int:
    from lvm.triage import filter_dataset, format_filter_summary

    summary = filter_dataset(
        args.dataset,
        args.out,
        min_coherence=args.min_coherence,
        blocklist=args.blocklist or None,
        ctx=args.ctx,
        min_ctx=args.min_ctx,
        baseline_path=args.baseline,
        materialize=args.materialize,
    )
    print(json.dumps(summary, indent=2) if args.json else format_filter_summary(summary))
    return 0


def build_parser(with_train_options: bool = True) -> argparse.ArgumentParser:
    from lvm import __version__
    from lvm.data.corpora import DEFAULT_CORPUS

    parser = OneLineParser(prog="lvm", description="lvm-gates: datasets, training and gates for latent vector models")
    parser.add_argument("--version", action="version", version=f"lvm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("build-data", help="corpus -> chunks -> vectors -> dataset folder -> FAISS index (cached)")
    p.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help=f"{DEFAULT_CORPUS!r} (default), a .jsonl file or a folder of .txt files",
    )
    p.add_argument("--out", default=DEFAULT_DATASET, help="dataset folder to write (default %(default)s)")
    p.add_argument(
        "--max-articles",
        type=number(int, 1, 100_000_000),
        default=None,
        metavar="N",
        help="only the corpus's first N articles, in its own order (recorded in meta.json; default: all)",
    )
    _add_encoder_args(p)
    g = p.add_argument_group("chunking")
    g.add_argument(
        "--min-chars",
        type=number(int, 1, 100_000),
        default=20,
        help="sentences shorter than this are merged into a neighbour (default %(default)s)",
    )
    g.add_argument(
        "--target-chars",
        type=number(int, 1, 1_000_000),
        default=None,
        help="pack sentences into chunks of about this many characters",
    )
    _add_split_args(p)
    g = p.add_argument_group("index")
    g.add_argument(
        "--index",
        choices=("auto", "flat-ip", "ivf-sq8-ip", "ivf-flat-ip"),
        default="auto",
        help="exact for small banks, IVF-flat for large (default %(default)s)",
    )
    g.add_argument("--nlist", type=COUNT, default=None, help="IVF lists (default ≈ 4·√N)")
    g.add_argument("--nprobe", type=COUNT, default=64, help="IVF lists searched per query (default %(default)s)")
    p.add_argument(
        "--batch-size", type=number(int, 1, 65_536), default=64, help="encoder batch size (default %(default)s)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if an identical dataset exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from lvm.data.build import ENCODE_BLOCK, ENGINES, MAX_WORKERS

    g = p.add_argument_group("engine (the same dataset either way)")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="encode in this process (local, default) or on Ray actors, sharded by article and resumable shard by "
        "shard (ray: embedded and local, or the cluster at RAY_ADDRESS; needs pip install '.[distributed]')",
    )
    g.add_argument(
        "--workers",
        type=number(int, 1, MAX_WORKERS),
        default=None,
        help="Ray actors, one CPU each (--engine ray; default: the cluster's CPUs)",
    )
    g.add_argument(
        "--shard-chunks",
        type=number(int, 1, 2**31 - 1),
        default=ENCODE_BLOCK,
        metavar="N",
        help="--engine ray: chunks per shard, at least (whole articles; default %(default)s)",
    )
    p.set_defaults(func=cmd_build_data)

    p = sub.add_parser("inspect", help="counts, dims, norms, coherence summary and splits of a dataset")
    p.add_argument("dataset")
    p.add_argument("--ctx", type=CTX, default=5)
    p.add_argument("--min-ctx", type=CTX, default=1)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("import-npz", help="import the seeds' .npz sequences into a dataset folder")
    p.add_argument("npz")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--encoder-name",
        default=None,
        help="encoder the vectors came from (recorded; e.g. sentence-transformers/gtr-t5-base)",
    )
    p.add_argument("--index", choices=("auto", "flat-ip", "ivf-sq8-ip", "ivf-flat-ip"), default="auto")
    p.add_argument("--quiet", action="store_true")
    _add_split_args(p)
    p.set_defaults(func=cmd_import_npz)

    p = sub.add_parser("build-index", help="(re)build the FAISS index of a dataset")
    p.add_argument("dataset")
    p.add_argument("--index", choices=("auto", "flat-ip", "ivf-sq8-ip", "ivf-flat-ip"), default="auto")
    p.add_argument("--nlist", type=COUNT, default=None)
    p.add_argument("--nprobe", type=COUNT, default=64)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_index)

    p = sub.add_parser("train", help="train a model (or fit a null baseline) with kill switches; writes a run folder")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue a run folder from its last finished epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if with_train_options:
        # one option per TrainConfig / LossConfig field: --field-name, with the field's type, default and help
        # (they import torch: built only when the command is `train`, so other commands start fast)
        from lvm.models.checkpoints import model_types
        from lvm.train.config import TrainConfig, add_config_arguments

        add_config_arguments(p, TrainConfig, "training", overrides={"model": {"choices": model_types()}})
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="mean val/OOD cosine of a checkpoint on a dataset (refuses mismatches)")
    p.add_argument("checkpoint", help="run folder, NAME.json or NAME.safetensors")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fingerprint", help="print the encoder fingerprint (SHA-256 of probes + pipeline)")
    _add_encoder_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fingerprint)
    p = sub.add_parser("synth", help="synthetic dataset of any size: random walks on the sphere with chosen coherence")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--n-chunks", type=number(int, 2, 2**31 - 1), default=36_000, help="total chunk vectors (default %(default)s)"
    )
    p.add_argument("--dim", type=DIM, default=384)
    p.add_argument(
        "--chunks-per-article",
        type=number(float, 1.0, 1e6),
        default=15.0,
        help="mean article length (default %(default)s)",
    )
    p.add_argument(
        "--coherence",
        type=number(float, -1.0, 1.0),
        default=0.48,
        help="mean adjacency cosine (default %(default)s, the seeds' healthy set)",
    )
    p.add_argument("--coherence-std", type=number(float, 0.0, 2.0), default=0.21)
    p.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="START:STOP:MEAN:STD",
        help="article-id range with its own coherence, e.g. 11000:15000:0.34:0.16 (repeatable)",
    )
    p.add_argument(
        "--duplicates",
        type=number(float, 0.0, 0.99),
        default=0.0,
        help="share of chunks replaced by exact copies of others",
    )
    p.add_argument("--quiet", action="store_true")
    _add_split_args(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "coherence",
        help="adjacency coherence report: statistics, 0.1-bin table against a baseline, "
        "coherence/coherence_drift verdicts and the segments that fell most",
    )
    p.add_argument("dataset")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="DATASET",
        help="dataset that worked (same encoder): side-by-side table, change in pp and the coherence_drift verdict",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--segment-width",
        type=COUNT,
        default=None,
        metavar="N",
        help="segments of N article ids each (default: 10 equal article-id ranges)",
    )
    g.add_argument("--by-topic", action="store_true", help="one segment per topic instead of article-id ranges")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--png", default=None, metavar="FILE", help="also write the overlay of both histograms (PNG, atomic)"
    )
    p.add_argument(
        "--gate-profile", default=None, help="thresholds for the verdicts (default: from the dataset's encoder)"
    )
    p.set_defaults(func=cmd_coherence)

    p = sub.add_parser(
        "filter",
        help="the seeds' quality filter: keep coherent sequences, drop blocklisted articles "
        "-> new dataset folder (a view of DATASET) + mask.npy + filter_summary.json",
    )
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="folder for the filtered dataset (written atomically)")
    p.add_argument(
        "--min-coherence",
        type=number(float, -1.0, 1.0),
        default=0.35,
        help="keep a sequence when its score >= this (default %(default)s, the seeds'). Score of the sequence "
        "with target chunk t and context chunks t-n..t-1 (n = min(position, ctx) >= min-ctx) = the mean of "
        "the n adjacency cosines cos(c_i, c_i+1), i = t-n .. t-1, i.e. over the consecutive pairs inside "
        "context + target",
    )
    p.add_argument(
        "--blocklist",
        default=r"List of|Disambiguation|Category:",
        metavar="REGEX",
        help="drop whole articles whose title or any chunk text matches (Python re.search, case-sensitive; "
        "'' disables; default %(default)s)",
    )
    p.add_argument(
        "--ctx", type=CTX, default=5, help="context length of the sequences scored and masked (default %(default)s)"
    )
    p.add_argument(
        "--min-ctx", type=CTX, default=1, help="shortest context counted as a sequence (default %(default)s)"
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="DATASET",
        help="also report the gap to this dataset's mean coherence (same encoder)",
    )
    p.add_argument(
        "--materialize",
        action="store_true",
        help="write a standalone copy (vectors and texts copied); by default the filtered dataset is a view "
        "that reads them through DATASET (rows.npy + the parent's path and content hash; nothing copied)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser(
        "leaderboard", help="leaderboard.md/.csv/.html from gate results files (reads them; never re-runs a gate)"
    )
    p.add_argument("results", nargs="+", help="gate results JSON file(s), e.g. reports/gate_results.json")
    p.add_argument("--out", default="reports", help="folder for leaderboard.md, .csv and .html (default %(default)s)")
    p.add_argument(
        "--samples",
        default=None,
        metavar="PATH",
        help="failure-mode samples file to show (default: each RESULTS file's <stem>.samples.json when it exists); "
        "writes samples.md beside the leaderboard; a damaged one is a warning, never an error",
    )
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "compare",
        help="regression check of NEW against BASELINE results: Markdown table; exit 1 on a regression or a RED gate",
    )
    p.add_argument("new", help="results file under test, e.g. reports/gate_results.json")
    p.add_argument("baseline", help="results file to compare against, e.g. reports/baseline.json")
    p.add_argument(
        "--gate-profile",
        default=None,
        help="profile whose [regression] tolerances apply (default: the one recorded in NEW)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="accept NEW from a partial run or missing gates/checkpoints of BASELINE (never accepts comparing nothing)",
    )
    p.set_defaults(func=cmd_compare)
    _add_model_commands(sub)
    _add_watch_command(sub)
    _add_sweep_command(sub)
    return parser


# ----------------------------------------------------------------------------- any model: export, sequences, import


def cmd_export(args) -> int:
    from lvm.models.adapters import ExportUntraceable, export_model, load_model, parse_model_args

    loaded = load_model(args.model, args.model_card, parse_model_args(args.model_args))
    try:
        card = export_model(loaded, args.out)
    except ExportUntraceable as exc:
        how = f"--checkpoint={args.model}" + (f" --model-card={args.model_card}" if args.model_card else "")
        raise LvmError(
            f"{exc}: no {args.out} written; gate it eagerly with {how} (the latency gate times the eager model)"
        ) from None
    print(
        f"{args.out}: torch.export program of {card['name']} "
        f"({card['type']}, ctx {card['ctx']}, dim {card['input_dim']}, "
        f"dynamic batch) + {Path(args.out).with_suffix('.json').name}"
    )
    return 0


def cmd_sequences(args) -> int:
    from lvm.data.datasets import open_dataset
    from lvm.models.predictions import write_manifest

    ds = open_dataset(args.dataset)
    args.min_ctx = args.ctx if args.min_ctx is None else args.min_ctx
    if not 1 <= args.min_ctx <= args.ctx:
        raise LvmError(f"--min-ctx must be between 1 and --ctx ({args.ctx}); got {args.min_ctx}")
    m = write_manifest(ds, args.ctx, args.min_ctx, args.out)
    print(
        f"{args.out}: sequence manifest of {ds.path} at ctx {args.ctx}, min_ctx {args.min_ctx}: "
        + ", ".join(f"{k} {v['n']}" for k, v in m["splits"].items())
        + "; write SPLIT.npy (N, D) float32 predictions and a card.json beside it"
    )
    return 0


def cmd_import_checkpoint(args) -> int:
    from lvm.models.adapters import parse_model_args
    from lvm.models.legacy import import_checkpoint

    fp = args.encoder_fingerprint
    if args.dataset:
        from lvm.data.datasets import open_dataset

        fp = fp or open_dataset(args.dataset).encoder_fingerprint
    card = import_checkpoint(
        args.checkpoint,
        args.factory,
        args.out,
        encoder_fingerprint=fp,
        ctx=args.ctx,
        min_ctx=args.min_ctx,
        input_dim=args.input_dim,
        name=args.name,
        accepts_mask=not args.no_mask,
        export=not args.no_export,
        model_args=parse_model_args(args.model_args),
    )
    exported = not args.no_export and not card.get("torch_export")
    print(
        f"{args.out}: {card['type']} ({card['n_params']:,} params, ctx {card['ctx']}, dim {card['input_dim']}) -> "
        f"model.safetensors + model.json"
        + (" + model.pt2" if exported else "")
        + ("" if card.get("accepts_mask", True) else f"; takes no mask: gated on full windows (min_ctx {card['ctx']})")
        + ("" if fp else "; no encoder fingerprint recorded (pass --dataset DIR): checkpoint_integrity will be RED")
    )
    if not exported:
        print(f"gate it eagerly with --checkpoint={args.factory} --model-card={Path(args.out) / 'model.json'}")
    return 0


def cmd_calibrate(args) -> int:
    from lvm.calibrate import CONTROLS, calibrate

    controls = tuple(c.strip() for c in args.broken.split(",") if c.strip()) if args.broken else CONTROLS
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    out = calibrate(args.dataset, args.reference, args.out, args.base, controls, args.name, log=log, seeds=args.seeds)
    print(
        f"{out}: gate profile calibrated on {args.dataset} against {', '.join(controls)}; "
        f"use it with --gate-profile {out}"
    )
    return 0


def _add_model_commands(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="write a gate profile for a new encoder/corpus from a healthy reference run, "
        "the null baselines and generated broken controls (refused if they do not separate)",
    )
    p.add_argument("dataset", help="dataset folder")
    p.add_argument(
        "--reference", required=True, help="a healthy model: run folder, NAME.json, NAME.pt2 or py:file.py:factory"
    )
    p.add_argument("--out", required=True, help="PROFILE.toml to write")
    p.add_argument(
        "--broken", default=None, help="comma-separated controls (default: copy_last,constant,shifted,shuffled_context)"
    )
    p.add_argument(
        "--base", default=None, help="profile to start from (default: the dataset's, else the family default)"
    )
    p.add_argument("--name", default=None, help="profile name (default: the file's stem)")
    p.add_argument(
        "--seeds",
        type=number(int, 2, 100),
        default=0,
        metavar="N",
        help="also retrain the reference (an lvm run) N times with other seeds and record the spread of its "
        "val/OOD cosine in [regression]: the regression check's minimum effect is 5x that spread (N >= 2)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "export",
        help="write a torch.export program (NAME.pt2 + NAME.json card, dynamic batch) from an lvm "
        "checkpoint or a py: factory, to gate it where its source is not installed",
    )
    p.add_argument(
        "model", help="run folder, NAME.json, or py:file.py:factory / py:pkg.module:factory (runs that code)"
    )
    p.add_argument("--out", required=True, help="NAME.pt2 to write (its card goes to NAME.json)")
    p.add_argument("--model-card", default=None, help="JSON card for a py: factory that does not return one")
    p.add_argument(
        "--model-args",
        nargs="+",
        default=None,
        metavar="K=V",
        help="keyword arguments for the py: factory or class (values read as JSON, else strings)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "sequences",
        help="sequence manifest of a dataset (per split: target and context chunk indices) "
        "for predictions made outside lvm (gated with --predictions)",
    )
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("--ctx", type=CTX, required=True, help="context length")
    p.add_argument("--min-ctx", type=CTX, default=None, help="shortest context (default: --ctx)")
    p.add_argument("--out", required=True, help="folder to write (refused if it holds other files)")
    p.set_defaults(func=cmd_sequences)

    p = sub.add_parser(
        "import-checkpoint",
        help="the seeds' best_model.pt (weights_only, no code from the file runs) -> "
        "safetensors + model card + .pt2, built with your class",
    )
    p.add_argument(
        "checkpoint", help="the .pt file ({'model_state_dict', 'model_config', 'args', ...} or a bare state dict)"
    )
    p.add_argument(
        "--factory",
        required=True,
        help="py:file.py:Class or py:pkg.module:factory, called with the file's model_config as keyword arguments; "
        "a forward(x) or forward(x, return_raw=False) gets no mask and is gated on full windows",
    )
    p.add_argument(
        "--model-args",
        nargs="+",
        default=None,
        metavar="K=V",
        help="keyword arguments added to (or replacing) the file's model_config (values read as JSON, else strings)",
    )
    p.add_argument("--out", required=True, help="folder for model.safetensors, model.json and model.pt2")
    p.add_argument("--dataset", default=None, help="dataset the model was trained on: records its encoder fingerprint")
    p.add_argument("--encoder-fingerprint", default=None, help="encoder fingerprint to record (see `lvm inspect`)")
    p.add_argument("--ctx", type=CTX, default=None, help="context length (default: from model_config/args)")
    p.add_argument("--min-ctx", type=CTX, default=None, help="shortest context it was trained on (default 1)")
    p.add_argument("--input-dim", type=DIM, default=None, help="vector dim (default: from model_config/args)")
    p.add_argument("--name", default=None, help="model name for the card (default: the checkpoint's folder name)")
    p.add_argument("--no-mask", action="store_true", help="the model cannot take padding (accepts_mask = false)")
    p.add_argument("--no-export", action="store_true", help="do not write model.pt2")
    p.set_defaults(func=cmd_import_checkpoint)


# ----------------------------------------------------------------------------- a trainer lvm does not own


def cmd_watch(args) -> int:
    import signal

    from lvm.train.watch import Watcher

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    watcher = Watcher(
        args.run_dir,
        dataset=args.dataset,
        fallback_dataset=DEFAULT_DATASET,
        profile=args.gate_profile,
        factory=args.factory,
        ctx=args.ctx,
        min_ctx=args.min_ctx,
        samples_per_epoch=args.samples_per_epoch,
        settle=args.settle,
        device=args.device,
        pid=args.pid,
        sig=getattr(signal, f"SIG{args.signal}"),
        out=lambda line: print(line, flush=True),
        err=lambda line: print(line, file=sys.stderr, flush=True),
    )
    return watcher.run(once=args.once, interval=args.interval, idle_timeout=args.idle_timeout)


def _add_watch_command(sub) -> None:
    p = sub.add_parser(
        "watch",
        help="gate each new checkpoint a foreign trainer writes in RUN_DIR (epoch_N.pt, best_model.pt, an lvm "
        "run's last.json) with the profile's epoch rules, as lvm train does; on a kill: RUN_DIR/KILL, exit 3",
    )
    p.add_argument("run_dir", help="the folder the trainer writes its checkpoints into")
    p.add_argument(
        "--dataset",
        default=None,
        help=f"dataset the val/OOD cosines are scored on (default: an lvm run's own, else {DEFAULT_DATASET})",
    )
    p.add_argument("--gate-profile", default=None, help="profile name or .toml path (default: the dataset's)")
    p.add_argument(
        "--factory",
        default=None,
        help="py:models.py:Class (or py:pkg.module:factory) built from a .pt file's model_config (runs that code)",
    )
    p.add_argument("--ctx", type=CTX, default=None, help="context length (default: from the checkpoint)")
    p.add_argument("--min-ctx", type=CTX, default=None, help="shortest context (default: the checkpoint's, else 1)")
    p.add_argument(
        "--samples-per-epoch",
        type=COUNT,
        default=None,
        help="training sequences the trainer sees per epoch: scales the schedule (default: the dataset's train split)",
    )
    p.add_argument(
        "--interval", type=number(float, 0.05, 86_400), default=30.0, help="seconds between looks (default %(default)s)"
    )
    p.add_argument("--once", action="store_true", help="judge what is there now (waiting for files being written)")
    p.add_argument(
        "--settle",
        type=number(float, 0.0, 3600),
        default=1.0,
        help="a file younger than this many seconds may still be being written: retried (default %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=number(float, 0.0, 31_536_000),
        default=None,
        help="stop (exit 0) after this many seconds without a new checkpoint (default: never)",
    )
    p.add_argument("--pid", type=number(int, 1, 2**31 - 1), default=None, help="signal this process on a kill")
    p.add_argument(
        "--signal", choices=("TERM", "INT", "KILL", "USR1", "USR2"), default="TERM", help="(default %(default)s)"
    )
    p.add_argument("--device", default=None, help="where to score: cpu (default), cuda, cuda:N")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, help="torch CPU threads for scoring")
    p.set_defaults(func=cmd_watch)


# ----------------------------------------------------------------------------- gate sweeps (Ray or a local pool)


def cmd_sweep(args) -> int:
    from lvm.sweep import SweepConfig, run_sweep

    extra = [  # paths made absolute: tasks run in other folders (or on other machines)
        f"--{k.replace('_', '-')}={Path(v).resolve() if Path(v).exists() else v}"
        for k in ("gate_profile", "ood_dataset", "baseline_dataset")
        if (v := getattr(args, k))
    ]
    cfg = SweepConfig(
        checkpoints=args.checkpoints,
        datasets=args.datasets,
        engine=args.engine,
        workers=args.workers,
        results=args.results,
        out=args.out,
        timeout=args.timeout,
        extra_args=tuple(extra),
        progress=not args.quiet,
        argv=["lvm", *args._argv],
    )
    return run_sweep(cfg)


def _add_sweep_command(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="gate every checkpoint x dataset of a sweep as independent tasks (Ray, or a local pool): one results "
        "file and one leaderboard; latency gates last, one at a time per node; exit 1 when a gate is RED",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="[NAME=]SPEC",
        help="run folders, checkpoint files, py: specs or globs ('runs/*'); each named by its folder (NAME= sets it)",
    )
    p.add_argument(
        "--datasets", nargs="+", default=[DEFAULT_DATASET], help=f"dataset folders (default {DEFAULT_DATASET})"
    )
    p.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
        help="ray: embedded local cluster, or the one at RAY_ADDRESS (needs lvm-gates[distributed]); local: a "
        "process pool (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=number(int, 1, 4096),
        default=None,
        help="tasks at a time (default: the CPUs of the machine, or of the Ray cluster)",
    )
    p.add_argument("--results", default="reports/sweep_results.json", help="merged results file (default %(default)s)")
    p.add_argument("--out", default="reports/sweep", help="folder for the leaderboard (default %(default)s)")
    p.add_argument(
        "--timeout",
        type=number(float, 1, 604_800),
        default=3600.0,
        help="seconds one task may run before it is RED (default %(default)s)",
    )
    p.add_argument("--gate-profile", default=None, help="gate profile for every task (default: each dataset's)")
    p.add_argument("--ood-dataset", default=None, help="separate out-of-distribution dataset (the gate suite's option)")
    p.add_argument("--baseline-dataset", default=None, help="dataset that worked, for coherence drift")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def _cross_check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bounds that tie two options together (each option's own bounds are declared beside it)."""
    ctx, min_ctx = getattr(args, "ctx", None), getattr(args, "min_ctx", None)
    if isinstance(ctx, int) and isinstance(min_ctx, int) and min_ctx > ctx:
        parser.error(f"--min-ctx {min_ctx} is larger than --ctx {ctx}")
    target, min_chars = getattr(args, "target_chars", None), getattr(args, "min_chars", None)
    if isinstance(target, int) and isinstance(min_chars, int) and target < min_chars:
        parser.error(f"--target-chars {target} is smaller than --min-chars {min_chars}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_train_options="train" in argv)
    args = parser.parse_args(argv)
    args._argv = argv
    _cross_check(parser, args)
    try:
        return args.func(args)
    except LvmError as exc:
        print(f"lvm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `lvm inspect ... | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, MemoryError) as exc:
        print(f"lvm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch reports a failed allocation as a RuntimeError (CPU) or OutOfMemoryError
        if type(exc).__name__ != "OutOfMemoryError" and "can't allocate memory" not in str(exc):
            raise
        why = " ".join(str(exc).split())[:200]
        print(f"lvm: error: out of memory ({why}): use a smaller model, batch or context", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

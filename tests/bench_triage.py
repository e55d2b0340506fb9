"""Triage at the floor and scaling curves (`make bench`; pytest-benchmark, results in reports/bench.json).

Issue 15, items 1 and 6. For every bank size (``LVM_BENCH_SIZES``, default ``50k,200k,726k,2M``;
``726k`` is the seeds' 726,014 and shares data/bench/syn726 with tests/bench_scale.py):

- a synthetic dirty set (a low-coherence segment at the articles the seeds' 11k–15k of 48.4k
  become at this size, ``lvm synth --segment``) and its clean twin, 768-D, under ``LVM_BENCH_DIR``
  (default data/bench), created once;
- both exported to the seeds' stream-layout ``.npz`` (tools/seeds_triage.py ``export_npz``) when
  the disk and memory can hold them (the file is 6× the bank: contexts are stored whole), removed
  after the size (``LVM_BENCH_KEEP_NPZ=1`` keeps them);
- side by side in one run, interleaved (seeds then ours, ``LVM_BENCH_ROUNDS`` rounds, default 3,
  medians): the seeds' drift (``tools/seeds_triage.py drift``) vs ``lvm coherence NEW --baseline
  CLEAN`` (with its default segments), and the seeds' mask vs ``lvm filter NEW --out OUT --ctx 5
  --min-ctx 5`` (the seeds' sequences are full ctx-5 windows), each a child process whose wall and
  peak RSS a wrapper measures (``RUSAGE_CHILDREN``, as bench_scale does);
- the floor, in this process from the page cache: one streaming pass over the bank (``vectors.npy``
  read in blocks into one buffer and summed, or a memory map's blocks summed: the faster) and one
  adjacency-cosine pass; ratios seeds/ours and ours/floor (coherence also against a pass over both
  banks, as it reads the baseline's too);
- agreement: the within-article pairs of the seeds' adjacent rows (their cross-article pairs
  dropped) against ``lvm.metrics.adjacency_coherence`` pair by pair, the CLI's mean against those
  pairs, and the seeds' kept windows against ``lvm filter``'s mask window by window (asserted);
- the full gate suite (``pytest gates/``, one 1-epoch AMN per size, index cached) as a child.

At the end of the module: reports/bench_scaling.md (table, with the growth exponent between
successive sizes: 1.0 = linear), reports/bench_scaling.png (wall and peak RSS against bank size)
and reports/bench_scaling.json (the rows). Figures are recorded, not asserted: a benchmark measures.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import seeds_triage  # noqa: E402  (tools/ is not a package)

from conftest import synth_once  # noqa: E402

BENCH = Path(os.environ.get("LVM_BENCH_DIR", ROOT / "data" / "bench"))
REPORTS = Path(os.environ.get("LVM_BENCH_REPORTS", ROOT / "reports"))  # scaling table and plot
SEEDS_N, DIM, CTX = 726_014, 768, 5
SEEDS_SEGMENT = (11_000, 15_000, 0.34, 0.16)  # the seeds' diluted articles at 726,014 chunks
ROUNDS = int(os.environ.get("LVM_BENCH_ROUNDS", "3"))
KEEP_NPZ = os.environ.get("LVM_BENCH_KEEP_NPZ", "0") == "1"
BLOCK = 16384  # rows per block of the floor passes (50 MB at 768-D)
SEEDS_TOOL = ROOT / "tools" / "seeds_triage.py"
# a wrapper process whose only child is the measured command: RUSAGE_CHILDREN is that command's peak RSS
WRAPPER = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[2:]); "
    "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "open(sys.argv[1], 'w').write(json.dumps({'wall_s': w, 'rc': r.returncode, "
    "'maxrss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime})); sys.exit(r.returncode)"
)


def parse_size(text: str) -> int:
    """'50k' -> 50,000; '2M' -> 2,000,000; '726k' -> 726,014 (the seeds' count); digits as they are."""
    t = text.strip().lower()
    if t in ("726k", "726"):
        return SEEDS_N
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def size_label(n: int) -> str:
    if n == SEEDS_N:
        return "726k"
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


SIZES = [parse_size(s) for s in os.environ.get("LVM_BENCH_SIZES", "50k,200k,726k,2M").split(",") if s.strip()]


def _segment(n: int) -> str:
    """The seeds' 11k–15k of 48.4k articles at this bank size (same share of the articles)."""
    lo, hi, mean, std = SEEDS_SEGMENT
    return f"{round(lo * n / SEEDS_N)}:{round(hi * n / SEEDS_N)}:{mean}:{std}"


def _dirs(n: int) -> tuple[Path, Path]:
    name = "syn726" if n == SEEDS_N else f"syn{size_label(n)}"  # 726k: bench_scale's sets
    return BENCH / name, BENCH / f"{name}-clean"


@pytest.fixture(scope="session", params=SIZES, ids=[size_label(n) for n in SIZES])
def sized(request) -> SimpleNamespace:
    n = request.param
    new, clean = _dirs(n)
    synth_once(new, n, DIM, _segment(n))
    synth_once(clean, n, DIM)
    return SimpleNamespace(n=n, label=size_label(n), new=new, clean=clean, bank_gb=n * DIM * 4 / 1024**3)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="session")
def seeds_npz(sized):
    """(new.npz, clean.npz, why-not): the seeds' layout of both sets, exported once (cached by content
    hash); (None, None, reason) when the disk or the memory cannot hold them."""
    need = seeds_triage.npz_bytes(sized.n, DIM)
    out_dir = BENCH / "seeds"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{d.name}.npz" for d in (sized.new, sized.clean)]
    fresh = [p for p, d in zip(paths, (sized.new, sized.clean), strict=False) if not _npz_current(p, d)]
    free = shutil.disk_usage(out_dir).free
    mem = _mem_available()
    if fresh and len(fresh) * need + (4 << 30) > free:
        yield None, None, f"seeds' .npz needs {len(fresh) * need / 1e9:.1f} GB, {free / 1e9:.1f} GB free on disk"
        return
    if need > 0.85 * mem:  # the seeds' mask holds contexts + targets in memory
        yield None, None, f"seeds' mask needs {need / 1e9:.1f} GB in memory, {mem / 1e9:.1f} GB available"
        return
    for p, d in zip(paths, (sized.new, sized.clean), strict=False):
        if p in fresh:
            info = seeds_triage.export_npz(d, p)
            Path(f"{p}.json").write_text(json.dumps(info))
    yield paths[0], paths[1], None
    if not KEEP_NPZ:
        for p in paths:
            p.unlink(missing_ok=True)
            Path(f"{p}.json").unlink(missing_ok=True)


def _npz_current(npz: Path, dataset: Path) -> bool:
    side = Path(f"{npz}.json")
    if not (npz.is_file() and side.is_file()):
        return False
    meta = json.loads((dataset / "meta.json").read_text())
    return json.loads(side.read_text()).get("content_hash") == meta.get("content_hash")


def measure(cmd: list[str], tmp: Path) -> dict:
    """Run ``cmd`` under the wrapper: its wall, peak RSS (GB), exit status and output."""
    stat = tmp / "wrapper.json"
    stat.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(stat), *cmd], cwd=ROOT, capture_output=True, text=True)
    info = json.loads(stat.read_text()) if stat.is_file() else {"wall_s": float("nan"), "rc": proc.returncode}
    return {
        "wall_s": info["wall_s"],
        "peak_rss_gb": info.get("maxrss_kb", 0) / 1024**2,
        "cpu_s": info.get("cpu_s", float("nan")),
        "rc": info["rc"],
        "stdout": proc.stdout,
        "stderr": proc.stderr[-2000:],
    }


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def _summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["rc"] == 0]
    if not ok:
        return {"failed": True, "rc": runs[-1]["rc"] if runs else None, "stderr": runs[-1]["stderr"] if runs else ""}
    return {
        "wall_s": round(_median(ok, "wall_s"), 3),
        "walls_s": [round(r["wall_s"], 3) for r in runs],
        "peak_rss_gb": round(_median(ok, "peak_rss_gb"), 3),
        "cpu_s": round(_median(ok, "cpu_s"), 3),
        "rounds": len(runs),
    }


# ----------------------------------------------------------------------------- the floor


def _open_npy(path: Path):
    fh = open(path, "rb")  # noqa: SIM115  (closed by the caller)
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    return fh, shape, dtype


def _read_rows(fh, view: memoryview, row_bytes: int) -> int:
    got = 0
    while got < len(view):
        k = fh.readinto(view[got:])
        if not k:
            break
        got += k
    return got // row_bytes


def stream_pass(path: Path) -> float:
    """One pass over a bank: ``vectors.npy`` read in blocks into one buffer and summed."""
    fh, (_, d), dtype = _open_npy(path)
    buf = np.empty((BLOCK, d), dtype)
    view = memoryview(buf).cast("B")
    total = 0.0
    with fh:
        while rows := _read_rows(fh, view, d * dtype.itemsize):
            total += float(buf[:rows].sum())
    return total


def mapped_pass(path: Path) -> float:
    """One pass over a bank through a memory map, block by block, summed (no copy into a buffer)."""
    mm = np.load(path, mmap_mode="r")
    total = 0.0
    for s in range(0, len(mm), BLOCK):
        total += float(mm[s : s + BLOCK].sum())
    del mm
    return total


def adjacency_pass(path: Path, article_id: np.ndarray) -> tuple[float, int]:
    """(mean, pairs) of cos(c_t, c_t+1) within articles: one pass, blocks read into one buffer whose row 0
    carries the previous block's last row."""
    fh, (n, d), dtype = _open_npy(path)
    buf = np.empty((BLOCK + 1, d), dtype)
    view = memoryview(buf[1:]).cast("B")
    out = np.empty(max(n - 1, 0), dtype=np.float64)
    pos, carried = 0, False
    with fh:
        while rows := _read_rows(fh, view, d * dtype.itemsize):
            a = buf[: rows + 1] if carried else buf[1 : rows + 1]
            norms = np.sqrt(np.einsum("ij,ij->i", a, a))
            cos = np.einsum("ij,ij->i", a[:-1], a[1:]) / np.maximum(norms[:-1] * norms[1:], 1e-12)
            out[pos : pos + len(cos)] = cos
            pos += len(cos)
            buf[0] = buf[rows]
            carried = True
    within = out[article_id[1:] == article_id[:-1]]
    return float(within.mean()), len(within)


def _timed(fn, rounds: int = max(ROUNDS, 5)) -> tuple[float, list[float], object]:
    walls, result = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
    return float(np.median(walls)), walls, result


FLOORS: dict[int, dict] = {}
SCALING: list[dict] = []  # rows of the scaling table: tool, n, wall_s, peak_rss_gb
RATIOS: list[dict] = []  # seeds vs ours vs floor per size, for the report


def floor_of(sized) -> dict:
    if sized.n not in FLOORS:
        aid = np.load(sized.new / "article_id.npy")
        new, clean = sized.new / "vectors.npy", sized.clean / "vectors.npy"
        stream_pass(new)  # warm the page cache: the floor is "from memory"
        read_s, walls, _ = _timed(lambda: stream_pass(new))
        mapped_s, mapped_walls, _ = _timed(lambda: mapped_pass(new))
        pass_s, fastest = min((read_s, stream_pass), (mapped_s, mapped_pass), key=lambda x: x[0])
        clean_s, _, _ = _timed(lambda: fastest(clean))
        adj_s, _, (mean, pairs) = _timed(lambda: adjacency_pass(new, aid))
        FLOORS[sized.n] = {
            "pass_s": round(pass_s, 4),  # the faster of the two ways
            "pass_read_blocks_s": round(read_s, 4),
            "pass_read_blocks_walls_s": [round(w, 4) for w in walls],
            "pass_mapped_s": round(mapped_s, 4),
            "pass_mapped_walls_s": [round(w, 4) for w in mapped_walls],
            "pass_gb_per_s": round(sized.bank_gb / pass_s, 2),
            "pass_both_banks_s": round(pass_s + clean_s, 4),
            "adjacency_pass_s": round(adj_s, 4),
            "adjacency_mean": mean,
            "adjacency_pairs": pairs,
        }
    return FLOORS[sized.n]


def _scaling_row(tool: str, sized, summary: dict) -> None:
    if not summary.get("failed"):
        SCALING.append(
            {
                "tool": tool,
                "n": sized.n,
                "size": sized.label,
                "bank_gb": round(sized.bank_gb, 3),
                "wall_s": summary["wall_s"],
                "peak_rss_gb": summary.get("peak_rss_gb"),
                "cpu_s": summary.get("cpu_s"),
            }
        )


def _ratio_row(what: str, sized, info: dict) -> None:
    seeds = info.get("seeds", {})
    RATIOS.append(
        {
            "what": what,
            "size": sized.label,
            "n": sized.n,
            "seeds_s": seeds.get("wall_s"),
            "seeds_rss_gb": seeds.get("peak_rss_gb"),
            "seeds_note": seeds.get("skipped") or ("failed" if seeds.get("failed") else None),
            "ours_s": info["ours"]["wall_s"],
            "ours_rss_gb": info["ours"]["peak_rss_gb"],
            "floor_s": info["floor"]["pass_s"],
            "seeds_over_ours": info.get("seeds_over_ours"),
            "ours_over_floor": info["ours_over_floor"],
            "agree": info.get("agreement", {}).get("agree"),
        }
    )


def test_bench_floor(benchmark, sized, tmp_path):
    """One streaming pass over the bank (blocks read into a buffer and summed; blocks of a memory map summed:
    the faster is the floor) and one adjacency-cosine pass, from memory."""
    fl = floor_of(sized)
    benchmark.pedantic(lambda: stream_pass(sized.new / "vectors.npy"), rounds=ROUNDS, iterations=1)
    startup = measure([sys.executable, "-m", "lvm.cli", "coherence", "--help"], tmp_path)
    benchmark.extra_info.update({"size": sized.label, "n_chunks": sized.n, "bank_gb": round(sized.bank_gb, 3), **fl})
    benchmark.extra_info["lvm_cli_startup_s"] = round(startup["wall_s"], 3)  # `lvm coherence --help`
    _scaling_row("floor: one pass", sized, {"wall_s": fl["pass_s"], "peak_rss_gb": None})
    _scaling_row("floor: adjacency pass", sized, {"wall_s": fl["adjacency_pass_s"], "peak_rss_gb": None})


# ----------------------------------------------------------------------------- coherence vs the seeds' drift


def _coherence_agreement(sized, new_npz: Path, ours: dict, seeds_json: dict) -> dict:
    """The seeds' adjacent-row cosines with their cross-article pairs dropped, pair by pair against
    lvm.metrics.adjacency_coherence (the stream layout lacks the pairs of the first ctx chunks)."""
    from lvm.data.datasets import open_dataset
    from lvm.metrics import adjacency_coherence

    data = np.load(new_npz)
    seeds_cos = seeds_triage.adjacency_cosines(data["target_vectors"])
    art = data["article_ids"]
    within = art[:-1] == art[1:]
    seeds_within = seeds_cos[within]
    del data
    ds = open_dataset(sized.new)
    ours_cos = adjacency_coherence(ds.vectors, ds.article_id)
    start = np.flatnonzero(ds.article_id[1:] == ds.article_id[:-1])
    same_pairs = ours_cos[start >= CTX]  # pair (t, t+1) is the seeds' row pair (t-ctx, t-ctx+1)
    ours_stats = ours["dataset"]["stats"]
    out = {
        "seeds_mean_all_pairs": seeds_json["new"]["mean"],
        "seeds_pairs_all": seeds_json["new"]["n_pairs"],
        "seeds_cross_article_pairs": int((~within).sum()),
        "seeds_mean_within_article": float(seeds_within.mean()),
        "seeds_pairs_within_article": int(len(seeds_within)),
        "ours_mean": ours_stats["mean"],
        "ours_pairs": ours_stats["n_pairs"],
        "ours_mean_same_pairs": float(same_pairs.mean()) if len(same_pairs) else None,
        "pairs_match": len(same_pairs) == len(seeds_within),
        "max_abs_pair_diff": float(np.abs(same_pairs - seeds_within).max())
        if len(same_pairs) == len(seeds_within)
        else None,
        "cli_mean_vs_library": abs(ours_stats["mean"] - float(ours_cos.mean())),
    }
    out["agree"] = bool(out["pairs_match"] and out["max_abs_pair_diff"] < 1e-5 and out["cli_mean_vs_library"] < 1e-9)
    return out


def _side_by_side(benchmark, sized, tmp_path, ours_cmd, seeds_cmd, why_not, seconds_key: str, before=None):
    """Interleaved rounds (the seeds' tool, when it can run, then ours), medians and the ratios to the
    floor and to the seeds' tool. Returns (info, ours summary, seeds summary or None, ours' last stdout)."""
    seeds_runs, ours_runs = [], []

    def setup():
        if before is not None:
            before()
        if why_not is None:
            seeds_runs.append(measure(seeds_cmd, tmp_path))

    benchmark.pedantic(lambda: ours_runs.append(measure(ours_cmd, tmp_path)), setup=setup, rounds=ROUNDS)
    assert all(r["rc"] == 0 for r in ours_runs), ours_runs[-1]["stderr"]
    ours, fl = _summary(ours_runs), floor_of(sized)
    stdout = json.loads(ours_runs[-1]["stdout"])
    info = {"size": sized.label, "n_chunks": sized.n, "bank_gb": round(sized.bank_gb, 3), "ours": ours, "floor": fl}
    info["ours_over_floor"] = round(ours["wall_s"] / fl["pass_s"], 2)
    info[seconds_key] = round(stdout["seconds"], 3)
    seeds = None
    if why_not is None:
        seeds = info["seeds"] = _summary(seeds_runs)
        if not seeds.get("failed"):
            info["seeds_over_ours"] = round(seeds["wall_s"] / ours["wall_s"], 2)
    else:
        info["seeds"] = {"skipped": why_not}
    return info, ours, seeds, stdout


def test_bench_coherence_vs_seeds(benchmark, sized, seeds_npz, tmp_path):
    """lvm coherence NEW --baseline CLEAN (segments by default) vs the seeds' drift on the .npz pair."""
    new_npz, clean_npz, why_not = seeds_npz
    seeds_json = tmp_path / "drift.json"
    ours_cmd = [sys.executable, "-m", "lvm.cli", "coherence", str(sized.new), "--baseline", str(sized.clean), "--json"]
    seeds_cmd = [sys.executable, str(SEEDS_TOOL), "drift", str(new_npz), str(clean_npz), "--json-out", str(seeds_json)]
    info, ours, seeds, report = _side_by_side(
        benchmark, sized, tmp_path, ours_cmd, seeds_cmd, why_not, "ours_report_seconds"
    )
    info["ours_over_floor_both_banks"] = round(ours["wall_s"] / info["floor"]["pass_both_banks_s"], 2)
    if seeds is not None:
        if not seeds.get("failed"):
            info["agreement"] = _coherence_agreement(sized, new_npz, report, json.loads(seeds_json.read_text()))
        _scaling_row("seeds: drift", sized, seeds)
    benchmark.extra_info.update(info)
    _scaling_row("lvm coherence --baseline", sized, ours)
    _ratio_row("coherence + drift", sized, info)
    if "agreement" in info:
        assert info["agreement"]["agree"], info["agreement"]


# ----------------------------------------------------------------------------- filter vs the seeds' mask


def _filter_agreement(sized, seeds_mask_path: Path, out: Path) -> dict:
    """The seeds' kept windows that lie inside one article against lvm filter's mask, window by window."""
    from lvm.data.datasets import open_dataset
    from lvm.data.splits import SPLIT_NAMES

    ds = open_dataset(sized.new)
    seeds_mask = np.load(seeds_mask_path)
    aid = ds.article_id
    within = aid[: len(seeds_mask)] == aid[CTX : CTX + len(seeds_mask)]  # row i: chunks i..i+ctx in one article
    seeds_by_target = np.zeros(ds.n_chunks, dtype=bool)
    seeds_by_target[CTX:][within] = seeds_mask[within]
    ours_mask = np.load(out / "mask.npy")
    targets = np.concatenate([ds.sequences(s, CTX, CTX).targets for s in SPLIT_NAMES])
    ours_by_target = np.zeros(ds.n_chunks, dtype=bool)
    ours_by_target[targets[ours_mask]] = True
    summary = json.loads((out / "filter_summary.json").read_text())
    windows = np.flatnonzero(within) + CTX
    res = {
        "seeds_rows": int(len(seeds_mask)),
        "seeds_kept_all_rows": int(seeds_mask.sum()),
        "seeds_within_article_rows": int(within.sum()),
        "seeds_kept_within_article": int(seeds_mask[within].sum()),
        "ours_sequences": summary["sequences"]["total"],
        "ours_kept": summary["sequences"]["kept"],
        "same_windows": bool(len(targets) == len(windows) and np.array_equal(np.sort(targets), windows)),
        "windows_disagreeing": int((ours_by_target != seeds_by_target).sum()),
    }
    # a window whose score lies within float32 rounding of 0.35 may fall either way
    res["agree"] = bool(res["same_windows"] and res["windows_disagreeing"] <= max(2, 1e-5 * len(windows)))
    return res


def test_bench_filter_vs_seeds(benchmark, sized, seeds_npz, tmp_path):
    """lvm filter NEW --out OUT --ctx 5 --min-ctx 5 vs the seeds' quality mask on the .npz."""
    new_npz, _, why_not = seeds_npz
    out, mask = tmp_path / "filtered", tmp_path / "seeds_mask.npy"
    ours_cmd = [sys.executable, "-m", "lvm.cli", "filter", str(sized.new), "--out", str(out)]
    ours_cmd += ["--ctx", str(CTX), "--min-ctx", str(CTX), "--json"]
    seeds_cmd = [sys.executable, str(SEEDS_TOOL), "mask", str(new_npz), "--out", str(mask)]

    def before():
        shutil.rmtree(out, ignore_errors=True)
        mask.unlink(missing_ok=True)

    info, ours, seeds, _ = _side_by_side(
        benchmark, sized, tmp_path, ours_cmd, seeds_cmd, why_not, "ours_summary_seconds", before
    )
    if seeds is not None:
        if not seeds.get("failed"):
            info["agreement"] = _filter_agreement(sized, mask, out)
        _scaling_row("seeds: mask", sized, seeds)
    benchmark.extra_info.update(info)
    _scaling_row("lvm filter", sized, ours)
    _ratio_row("filter / mask", sized, info)
    shutil.rmtree(out, ignore_errors=True)
    if "agreement" in info:
        assert info["agreement"]["agree"], info["agreement"]


# ----------------------------------------------------------------------------- the gate suite


def _checkpoint(sized) -> Path:
    """A 1-epoch AMN per size (as bench_scale's big_checkpoint; at 726k the same run folder)."""
    from lvm.train.trainer import TrainConfig, Trainer

    run = BENCH / "runs" / f"amn-{sized.new.name}"
    seeds_run = BENCH / "runs" / "amn-syn726"
    if sized.n > SEEDS_N and (seeds_run / "best.json").is_file() and not (run / "best.json").is_file():
        # above the seeds' size the 726k AMN is gated (same space: synthetic fingerprints name dim and
        # seed): the suite's cost does not depend on the training, which would take ~25 min at 2M here
        return seeds_run
    if not (run / "best.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        cfg = TrainConfig(dataset=str(sized.new), epochs=1, batch_size=512, kill_switches=False)
        Trainer(cfg, run, progress=False).run()
    return run


def test_bench_gate_suite(benchmark, sized, tmp_path):
    """`pytest gates/` for one AMN checkpoint, index and null-baseline ridge cached (built before, not timed):
    wall, peak RSS, per gate."""
    from lvm.data.datasets import open_dataset
    from lvm.data.index import load_or_build_index

    load_or_build_index(open_dataset(sized.new))
    ckpt = _checkpoint(sized)
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "gates/", f"--checkpoint={ckpt}", f"--dataset={sized.new}", "-q"]
    cmd += ["-p", "no:cacheprovider", f"--results={tmp_path / 'r.json'}", f"--junitxml={junit}"]
    ridge_cached = any((sized.new / "cache").glob("ridge-*.safetensors"))
    if not ridge_cached:  # the null baselines' ridge is fitted once per dataset and cached: not part of a gate run
        warm = measure([*cmd, "-k", "beats_baselines"], tmp_path)
        assert warm["rc"] in (0, 1), warm["stdout"][-2000:] + warm["stderr"]
    runs = []
    benchmark.pedantic(lambda: runs.append(measure(cmd, tmp_path)), rounds=1, iterations=1)
    run = runs[-1]
    assert run["rc"] in (0, 1), run["stdout"][-2000:] + run["stderr"]  # 1 = a RED gate, still measured
    per_gate = {c.get("name"): round(float(c.get("time", 0)), 2) for c in ET.parse(junit).getroot().iter("testcase")}
    summary = {
        "wall_s": round(run["wall_s"], 2),
        "peak_rss_gb": round(run["peak_rss_gb"], 3),
        "cpu_s": round(run["cpu_s"], 1),
    }
    benchmark.extra_info.update(
        {
            "size": sized.label,
            "n_chunks": sized.n,
            "bank_gb": round(sized.bank_gb, 3),
            **summary,
            "rss_over_bank": round(run["peak_rss_gb"] / sized.bank_gb, 2),
            "per_gate_s": per_gate,
            "exit_code": run["rc"],
            "checkpoint": ckpt.name,
            "ridge_fitted_before": "cached" if ridge_cached else "fitted by an untimed -k beats_baselines run",
            "summary": json.loads((tmp_path / "r.json").read_text())["summary"],
        }
    )
    _scaling_row("gate suite", sized, summary)


# ----------------------------------------------------------------------------- scaling table and plot


def _growth(rows: list[dict], key: str) -> list[float | None]:
    """Exponent of growth against the previous size: log(y2/y1) / log(n2/n1) (1.0 = linear)."""
    out: list[float | None] = [None]
    for a, b in zip(rows, rows[1:], strict=False):
        ya, yb = a.get(key), b.get(key)
        ok = ya and yb and ya > 0 and yb > 0 and b["n"] != a["n"]
        out.append(round(math.log(yb / ya) / math.log(b["n"] / a["n"]), 2) if ok else None)
    return out


def _by_tool(rows: list[dict]) -> dict[str, list[dict]]:
    tools: dict[str, list[dict]] = {}
    for r in rows:
        tools.setdefault(r["tool"], []).append(r)
    return {t: sorted(rs, key=lambda r: r["n"]) for t, rs in tools.items()}


def _fmt(v) -> str:
    return "" if v is None else f"{v:.2f}"


def write_scaling(rows: list[dict], ratios: list[dict], reports: Path = REPORTS) -> None:
    """reports/bench_scaling.{json,md,png}: wall and peak RSS against bank size per tool, and the
    seeds-vs-ours-vs-floor ratios."""
    reports.mkdir(parents=True, exist_ok=True)
    tools = _by_tool(rows)
    doc = {"rows": rows, "triage": ratios, "rounds": ROUNDS}
    (reports / "bench_scaling.json").write_text(json.dumps(doc, indent=2))
    lines = [
        "# Wall and peak RSS against bank size (768-D float32)",
        "",
        "growth = exponent against the previous size, log(y2/y1)/log(n2/n1): 1.0 is linear.",
        f"Child processes measured by wall clock and RUSAGE_CHILDREN; median of {ROUNDS} for the triage tools, "
        "1 run for the gate suite; floor passes in-process from the page cache (no RSS).",
        "",
        "| tool | size | chunks | bank GB | wall s | growth | CPU s | peak RSS GB | RSS / bank | growth |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tool, rs in tools.items():
        for r, gw, gr in zip(rs, _growth(rs, "wall_s"), _growth(rs, "peak_rss_gb"), strict=False):
            rss = r.get("peak_rss_gb")
            per_bank = "" if rss is None else f"{rss / r['bank_gb']:.2f}"
            cpu = "" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}"
            lines.append(
                f"| {tool} | {r['size']} | {r['n']:,} | {r['bank_gb']:.2f} | {r['wall_s']:.2f} | "
                f"{'' if gw is None else gw} | {cpu} | "
                f"{'' if rss is None else f'{rss:.2f}'} | "
                f"{per_bank} | {'' if gr is None else gr} |"
            )
    if ratios:
        lines += [
            "",
            "## Triage: the seeds' tools vs ours vs the floor (one streaming pass over the bank)",
            "",
            "Target (issue 15): seeds / ours ≥ 10 and ours / floor ≤ 5 at 726k.",
            "",
            "| what | size | seeds s | seeds RSS GB | ours s | ours RSS GB | floor s | seeds / ours | ours / floor "
            "| numbers agree |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(ratios, key=lambda r: (r["what"], r["n"])):
            seeds = r["seeds_note"] or f"{r['seeds_s']:.2f}"
            lines.append(
                f"| {r['what']} | {r['size']} | {seeds} | {_fmt(r['seeds_rss_gb'])} | {r['ours_s']:.2f} | "
                f"{r['ours_rss_gb']:.2f} | {r['floor_s']:.3f} | {_fmt(r['seeds_over_ours'])} | "
                f"{r['ours_over_floor']:.1f} | {'' if r['agree'] is None else r['agree']} |"
            )
    (reports / "bench_scaling.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_w, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (tool, rs) in enumerate(tools.items()):
        n = [r["n"] for r in rs]
        kw = {
            "marker": "o",
            "color": f"C{i}",
            "label": tool,
            "ls": "--" if tool.startswith(("floor", "seeds")) else "-",
        }
        ax_w.plot(n, [r["wall_s"] for r in rs], **kw)
        with_rss = [r for r in rs if r.get("peak_rss_gb")]
        if with_rss:
            ax_r.plot([r["n"] for r in with_rss], [r["peak_rss_gb"] for r in with_rss], **kw)
    ns = sorted({r["n"] for r in rows})
    if ns:
        ax_r.plot(ns, [n * DIM * 4 / 1024**3 for n in ns], ":", color="grey", label="bank size")
    for ax, ylabel in ((ax_w, "wall (s)"), (ax_r, "peak RSS (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns, [size_label(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("bank size (chunks, 768-D)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_w.set_title("wall against bank size (log-log: slope 1 = linear)")
    ax_r.set_title("peak RSS against bank size")
    ax_w.legend(fontsize=8)
    ax_r.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(reports / "bench_scaling.png", dpi=100)
    plt.close(fig)


@pytest.fixture(scope="module", autouse=True)
def scaling_report():
    yield
    if SCALING:
        write_scaling(SCALING, RATIOS)

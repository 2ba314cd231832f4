"""The image benchmark's full protocol, resumable, on several worker processes.

Ten deterministic seeds (they also make the ensembles), three seeds of every other method
in ``images.METHODS``; each (method, seed) is one ``images.py`` process writing its own
JSON, and a JSON already in ``--out-dir`` is not run again, so an interrupted run picks up
where it stopped. Then the 5- and 10-member ensembles, the side-by-side cost ratios, the
table and the figures. About 4 hours on 2 cores (docs/images.md).

    python benchmarks/images_full.py --workers 2
    python benchmarks/images_full.py --workers 1 --methods deterministic,vi_flipout
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from images import METHODS

HERE = Path(__file__).resolve().parent
DETERMINISTIC_SEEDS = tuple(range(10))
SEEDS = (0, 1, 2)
ENSEMBLE_SEEDS = {"ensemble_5": (0, 1), "ensemble_10": (0,)}  # disjoint sets of members


def jobs(methods: list[str]) -> list[tuple[str, int]]:
    """(method, seed) in the order they run: deterministic seeds first, then by seed."""
    out = [("deterministic", s) for s in DETERMINISTIC_SEEDS if "deterministic" in methods]
    others = [m for m in methods if m != "deterministic"]
    return out + [(m, s) for s in SEEDS for m in others]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "images")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="list the runs still to do")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {list(METHODS)}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, str(HERE / "images.py"), "--out-dir", str(args.out_dir)]
    if args.data_dir is not None:
        base += ["--data-dir", str(args.data_dir)]
    todo = [(m, s) for m, s in jobs(methods) if not (args.out_dir / f"{m}_seed{s}.json").exists()]
    print(f"{len(todo)} runs to do ({len(jobs(methods)) - len(todo)} already done)", flush=True)
    if args.dry_run:
        print("\n".join(f"{m} seed {s}" for m, s in todo))
        return

    def run(job: tuple[str, int]) -> int:
        method, seed = job
        start = time.perf_counter()
        cmd = [*base, "--threads", "1", "--methods", method, "--seeds", str(seed)]
        done = subprocess.run(cmd, check=False)
        print(f"{method} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        return done.returncode

    with ThreadPoolExecutor(args.workers) as pool:
        failed = [job for job, rc in zip(todo, pool.map(run, todo), strict=True) if rc]
    if failed:
        sys.exit(f"images_full: failed runs {failed}")
    if "deterministic" in methods:
        for name, seeds in ENSEMBLE_SEEDS.items():
            cmd = [*base, "--methods", name, "--seeds", ",".join(map(str, seeds))]
            subprocess.run(cmd, check=True)
    ensembles = list(ENSEMBLE_SEEDS) if "deterministic" in methods else []
    cost = [*base, "--threads", "1", "--cost", "--methods", ",".join(methods + ensembles)]
    subprocess.run(cost, check=True)
    subprocess.run([*base, "--table", "--figures"], check=True)


if __name__ == "__main__":
    main()

"""Crash consistency under a storm: `make chaos` (python -m bench.chaos).

Streams >= 1M metric points from several SDK processes while a seeded scheduler SIGKILLs
the projector, the analysis service and the API (>= 20 times, some overlapping) and
restarts the broker and PostgreSQL; then checks that every store holds exactly what the
clients were acknowledged for, and every planted anomaly has one finding
(tests/support/chaos*.py). Seed: --seed or RUNLEDGER_CHAOS_SEED. Output: the report as
JSON in bench/out/chaos-<seed>.json and a paragraph on stdout; exit status 1 on any
loss, duplicate or mismatch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from tests.support.chaos import seed_from_env
from tests.support.chaos_model import ChaosConfig
from tests.support.chaos_trial import markdown, run_trial

OUT = Path(__file__).parent / "out"


def main() -> None:
    """CLI entry."""
    default = ChaosConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=seed_from_env())
    parser.add_argument("--writers", type=int, default=default.writers)
    parser.add_argument("--runs-per-writer", type=int, default=default.runs_per_writer)
    parser.add_argument("--keys", type=int, default=default.keys)
    parser.add_argument("--steps", type=int, default=default.steps)
    parser.add_argument("--chunk-steps", type=int, default=default.chunk_steps)
    parser.add_argument("--chunk-interval", type=float, default=default.chunk_interval_s)
    parser.add_argument("--kills", type=int, default=default.kills)
    parser.add_argument("--broker-restarts", type=int, default=default.broker_restarts)
    parser.add_argument("--broker-rotations", type=int, default=default.broker_rotations)
    parser.add_argument("--postgres-restarts", type=int, default=default.postgres_restarts)
    parser.add_argument("--keep", action="store_true", help="keep the state directory (logs, data)")
    args = parser.parse_args()
    config = replace(
        default,
        seed=args.seed,
        writers=args.writers,
        runs_per_writer=args.runs_per_writer,
        keys=args.keys,
        steps=args.steps,
        chunk_steps=args.chunk_steps,
        chunk_interval_s=args.chunk_interval,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        broker_rotations=args.broker_rotations,
        postgres_restarts=args.postgres_restarts,
    )
    out = OUT / f"chaos-{config.seed}"
    shutil.rmtree(out, ignore_errors=True)
    print(
        f"chaos: seed {config.seed}, {config.points:,} points from {config.writers} SDK processes over "
        f"~{config.stream_s:.0f} s, {config.kills} kills, {config.broker_restarts} broker restart(s),"
        f" {config.broker_rotations} broker replacement(s) and {config.postgres_restarts} PostgreSQL restart(s)",
        flush=True,
    )
    report = run_trial(config, out, fsync=True)
    if not args.keep and report["ok"]:
        shutil.rmtree(report["state_dir"], ignore_errors=True)
    path = OUT / f"chaos-{config.seed}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("trials", "points", "sdk", "findings", "seconds")}, indent=2))
    print(markdown(report))
    print(f"report: {path}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()

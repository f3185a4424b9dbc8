"""Quality and speed of the causal attribution: `python -m bench.attribution_quality [--cases N] [--seed S]`.

Over N seeded cases from bench/attribution_data.py: top-1 / top-3 accuracy of
`runledger.analysis.attribution.attribute` (a group of inseparable factors counts as naming
each member) beside the naive |correlation| ranking, for all cases and the confounded ones,
plus how often the red herring ranks below the true cause. Then the wall time of one
attribution over 1,000 runs x 20 factors (target <= 30 s). Markdown to stdout.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.attribution_data import make_case
from runledger.analysis.attribution import AttributionOptions, attribute


def _position(ranking: list[list[str]], name: str) -> int | None:
    for i, members in enumerate(ranking):
        if name in members:
            return i
    return None


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the report."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=300, help="runs per quality case")
    args = ap.parse_args(argv)

    # Quality: refutations off (they do not change the ranking) to keep the run short.
    opts = AttributionOptions(bootstrap=50, refute_top=0)
    rows: list[dict[str, Any]] = []
    for k in range(args.cases):
        case = make_case(args.seed + k, n_runs=args.runs)
        res = attribute(case.data, opts)
        ours = [f.members for f in res.factors]
        naive = [str(r["factor"]).split(" + ") for r in res.naive_ranking]
        p_ours, p_naive = _position(ours, case.true_cause), _position(naive, case.true_cause)
        rh_below = None
        if case.red_herring:
            p_rh = _position(ours, case.red_herring)
            rh_below = p_ours is not None and (p_rh is None or p_rh > p_ours or ours[p_rh] == ours[p_ours])
        rows.append(
            {
                "confounded": case.confounded,
                "ours1": p_ours == 0,
                "ours3": p_ours is not None and p_ours < 3,
                "naive1": p_naive == 0,
                "naive3": p_naive is not None and p_naive < 3,
                "rh_below": rh_below,
            }
        )

    def rate(sel: list[dict[str, Any]], key: str) -> str:
        vals = [r[key] for r in sel if r[key] is not None]
        return f"{sum(vals) / len(vals):.0%} ({sum(vals)}/{len(vals)})" if vals else "n/a"

    print(f"## Attribution quality ({args.cases} cases, seed {args.seed}, {args.runs} runs each)\n")
    print(
        "| subset | cases | top-1 attribute | top-1 naive | top-3 attribute | top-3 naive | red herring below cause |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, sel in (
        ("all", rows),
        ("confounded", [r for r in rows if r["confounded"]]),
        ("unconfounded", [r for r in rows if not r["confounded"]]),
    ):
        print(
            f"| {label} | {len(sel)} | {rate(sel, 'ours1')} | {rate(sel, 'naive1')} | {rate(sel, 'ours3')} "
            f"| {rate(sel, 'naive3')} | {rate(sel, 'rh_below')} |"
        )

    # Speed: 1,000 runs x 20 factors, default options (bootstrap 200, dowhy refuters on the top 5).
    big = make_case(args.seed + 10_000, n_runs=1000, n_factors=20, confounded=True)
    t0 = time.perf_counter()
    import dowhy  # type: ignore[import-untyped]  # noqa: F401  # the one-off import, timed apart

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = attribute(big.data)
    t_run = time.perf_counter() - t0
    top = res.factors[0].factor if res.factors else "-"
    print("\n## Speed: one attribution, 1,000 runs x 20 factors (default options)\n")
    print("| import dowhy (once per process) | attribute() | total | target | top factor (label) |")
    print("|---|---|---|---|---|")
    print(
        f"| {t_import:.1f} s | {t_run:.1f} s | {t_import + t_run:.1f} s | <= 30 s "
        f"| {top} ({big.true_cause}) |"
    )


if __name__ == "__main__":
    main()

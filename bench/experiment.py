"""``tailor bench experiment``: what experiments cost per request, and whether their statistics keep their promises.

One JSON object with four parts:

* ``assignment_us``: one `assign` call per request (2 arms and 10 arms, both
  with a 10% holdout) and one `assign_factorial` call over 2 factors, timed call
  by call over distinct users (median, p99); `assign_many` over a batch of
  10,000 users, per user;
* ``analyze_ms``: `analyze` over 100 arms with about 10,000 users each, timed
  with the Bayesian read-out's Monte Carlo nearly off (``draws=1``), at
  ``draws=10_000`` and at the default ``draws=100_000``; the share of the
  default's time spent in that Monte Carlo says what dominates;
* ``false_positives``: A/A experiments (both arms at the baseline rate) looked
  at ``--looks`` times, equally spaced up to the planned sample size. Naive
  peeking stops at the first look whose z-test p < alpha; the mSPRT stops at the
  first look whose always-valid p-value (chained through ``previous=``) is below
  alpha; the fixed-horizon test looks once, at the end. Each rate comes with its
  Wilson 95% interval;
* ``power``: the same, with a true +20% relative lift: the share found by the
  mSPRT (stopping at any look) and by the fixed test at the planned sample size
  (`plan_sample_size`, 80% power by design), and by the mSPRT allowed to run on
  to twice that sample size (the price of looking whenever one likes).

The simulations draw binomial counts per look for all experiments at once: the
engine's tests take arrays, so thousands of experiments are one call per look.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

from bench.common import peak_rss_mb, percentile
from config.settings import Settings
from engine.experiments.assignment import Allocation, Arm, Experiment, assign, assign_factorial, assign_many
from engine.experiments.statistics import (
    ArmStats,
    analyze,
    msprt_pvalue,
    plan_sample_size,
    rate_ci,
    two_proportion_ztest,
)

ALPHA = 0.05
BASELINE = 0.05
LIFT = 0.20
#: The mSPRT mixture's spread: the absolute difference the experiment hopes to detect (5% -> 6%).
TAU = 0.01
HOLDOUT_SHARE = 0.1
ANALYZE_ARMS = 100
ANALYZE_USERS = 1_000_000
BATCH = 10_000


def run_experiment_bench(settings: Settings, args) -> int:
    if args.experiments < 1000 and not args.quick:
        print(f"note: {args.experiments} experiments give wide intervals; 1,000 or more is advised", file=sys.stderr)
    aa_rng, power_rng, arms_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(3))
    calls = 2_000 if args.quick else 20_000
    print(f"timing assignment ({calls} calls each) ...", file=sys.stderr)
    assignment = time_assignment(calls, batch_repeats=3 if args.quick else 20)
    print("timing analyze over 100 arms ...", file=sys.stderr)
    results = time_analyze(arms_rng, repeats=3 if args.quick else 30, default_repeats=2 if args.quick else 10)
    per_arm = plan_sample_size(BASELINE, LIFT, alpha=ALPHA)
    print(
        f"simulating {args.experiments} A/A and {args.experiments} A/B experiments, {args.looks} looks ...",
        file=sys.stderr,
    )
    aa = simulate(aa_rng, args.experiments, args.looks, per_arm, BASELINE, BASELINE)
    ab = simulate(power_rng, args.experiments, args.looks, per_arm, BASELINE, BASELINE * (1 + LIFT))
    # What the always-valid test needs instead: the same look spacing, run on to twice the users.
    ab_long = simulate(power_rng, args.experiments, 2 * args.looks, 2 * per_arm, BASELINE, BASELINE * (1 + LIFT))
    setup = {
        "alpha": ALPHA,
        "looks": args.looks,
        "experiments": args.experiments,
        "users_per_arm": per_arm,
        "baseline": BASELINE,
        "tau": TAU,
        "seed": args.seed,
    }
    out = {
        "bench": "experiment",
        "quick": args.quick,
        "assignment_us": assignment,
        "analyze_ms": results,
        "false_positives": setup
        | {
            "naive_peeking": share(aa["naive"]),
            "msprt": share(aa["msprt"]),
            "fixed_horizon": share(aa["fixed"]),
        },
        "power": setup
        | {
            "lift_relative": LIFT,
            "treated_rate": round(BASELINE * (1 + LIFT), 6),
            "planned_power": 0.8,
            "msprt": share(ab["msprt"]) | {"median_share_of_users_at_stop": ab["msprt_stop_share"]},
            "fixed_horizon": share(ab["fixed"]),
            "msprt_twice_the_users": share(ab_long["msprt"]) | {"users_per_arm": 2 * per_arm, "looks": 2 * args.looks},
        },
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- cost


def _summary_us(ns: list[int]) -> dict:
    return {"median": round(statistics.median(ns) / 1e3, 2), "p99": round(percentile(ns, 99) / 1e3, 2)}


def _time_calls(fn, users: list[str]) -> list[int]:
    for u in users[:200]:  # warm-up: first calls pay for imports and caches
        fn(u)
    out = []
    clock = time.perf_counter_ns
    for u in users:
        start = clock()
        fn(u)
        out.append(clock() - start)
    return out


def time_assignment(calls: int, batch_repeats: int) -> dict:
    users = [f"user-{i}" for i in range(calls)]
    two = Experiment("bench-2", Allocation((Arm("control"), Arm("treatment")), holdout=HOLDOUT_SHARE))
    ten = Experiment("bench-10", Allocation(tuple(Arm(f"arm-{i}") for i in range(10)), holdout=HOLDOUT_SHARE))
    factors = {"headline": ["short", "long"], "image": ["a", "b", "c"]}
    out = {"calls": calls, "holdout": HOLDOUT_SHARE}
    out["assign_2_arms_holdout"] = _summary_us(_time_calls(lambda u: assign(u, two), users))
    out["assign_10_arms_holdout"] = _summary_us(_time_calls(lambda u: assign(u, ten), users))
    out["assign_factorial_2_factors"] = _summary_us(
        _time_calls(lambda u: assign_factorial(u, "bench-f", factors), users)
    )
    batch = [f"batch-user-{i}" for i in range(BATCH)]
    per_user = {}
    for name, exp in (("2_arms_holdout", two), ("10_arms_holdout", ten)):
        assign_many(batch[:100], exp)
        runs = []
        for _ in range(batch_repeats):
            start = time.perf_counter_ns()
            assign_many(batch, exp)
            runs.append((time.perf_counter_ns() - start) / BATCH)
        per_user[name] = {
            "median": round(statistics.median(runs) / 1e3, 3),
            "p99": round(percentile(runs, 99) / 1e3, 3),
        }
    out["assign_many_per_user"] = {"batch": BATCH, "repeats": batch_repeats} | per_user
    return out


def realistic_arms(rng: np.random.Generator) -> list[ArmStats]:
    """100 arms sharing a million users equally, rates around 5%, buyers' order values log-normal (~€40)."""
    sizes = rng.multinomial(ANALYZE_USERS, np.full(ANALYZE_ARMS, 1 / ANALYZE_ARMS))
    rates = BASELINE * (1 + rng.normal(0.0, 0.05, ANALYZE_ARMS))
    arms = []
    for i, (n, rate) in enumerate(zip(sizes, rates)):
        buyers = int(rng.binomial(n, rate))
        values = rng.lognormal(3.5, 0.6, buyers)
        arms.append(
            ArmStats(
                arm=f"arm-{i:03d}",
                n=int(n),
                conversions=buyers,
                value_sum=float(values.sum()),
                value_sum_sq=float((values**2).sum()),
            )
        )
    return arms


def time_analyze(rng: np.random.Generator, repeats: int, default_repeats: int) -> dict:
    arms = realistic_arms(rng)
    out = {"arms": ANALYZE_ARMS, "users": ANALYZE_USERS, "comparisons": 2 * (ANALYZE_ARMS - 1)}
    medians = {}
    for draws, n in ((1, repeats), (10_000, repeats), (100_000, default_repeats)):
        analyze(arms, "arm-000", draws=draws)  # warm-up
        runs = []
        for _ in range(n):
            start = time.perf_counter_ns()
            report = analyze(arms, "arm-000", draws=draws)
            runs.append((time.perf_counter_ns() - start) / 1e6)
        medians[draws] = statistics.median(runs)
        label = f"draws_{draws}" + ("_default" if draws == 100_000 else "")
        out[label] = {"median": round(medians[draws], 2), "p99": round(percentile(runs, 99), 2), "repeats": n}
    share = 1 - medians[1] / medians[100_000]
    out["monte_carlo_share_at_default"] = round(share, 3)
    out["dominated_by"] = (
        f"beta_binomial's Monte Carlo (2 x draws Beta samples per treatment arm): {share:.0%} of the default's time"
        if share > 0.5
        else f"the closed-form tests and corrections: Monte Carlo is {share:.0%} of the default's time"
    )
    out["srm_alarm"] = report.srm_alarm
    return out


# --------------------------------------------------------------------------- error rates


def simulate(
    rng: np.random.Generator, experiments: int, looks: int, per_arm: int, rate_c: float, rate_t: float
) -> dict:
    """Which of ``experiments`` simulated experiments each procedure declares significant, looking ``looks`` times."""
    n_at = np.unique(np.round(np.linspace(0, per_arm, looks + 1)).astype(int))[1:]  # users per arm at each look
    grown = np.diff(n_at, prepend=0)
    x_c = rng.binomial(grown, rate_c, size=(experiments, n_at.size)).cumsum(axis=1)
    x_t = rng.binomial(grown, rate_t, size=(experiments, n_at.size)).cumsum(axis=1)
    naive = np.zeros(experiments, dtype=bool)
    stopped_at = np.full(experiments, -1)
    p_seq = np.ones(experiments)
    for k, n in enumerate(n_at):
        _, p = two_proportion_ztest(x_c[:, k], n, x_t[:, k], n)
        naive |= p < ALPHA
        p_seq = msprt_pvalue(x_c[:, k], n, x_t[:, k], n, tau=TAU, previous=p_seq)
        stopped_at = np.where((stopped_at < 0) & (p_seq < ALPHA), k, stopped_at)
    _, p_end = two_proportion_ztest(x_c[:, -1], n_at[-1], x_t[:, -1], n_at[-1])
    found = stopped_at >= 0
    stop_share = float(np.median(n_at[stopped_at[found]]) / per_arm) if found.any() else None
    return {
        "naive": naive,
        "msprt": found,
        "fixed": p_end < ALPHA,
        "msprt_stop_share": round(stop_share, 3) if stop_share is not None else None,
    }


def share(flags: np.ndarray) -> dict:
    hits, n = int(flags.sum()), int(flags.size)
    low, high = rate_ci(hits, n)
    return {"rate": round(hits / n, 4), "ci_low": round(low, 4), "ci_high": round(high, 4), "significant": hits}

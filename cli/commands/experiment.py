"""``tailor experiment plan``: how many users, and how many days, an A/B/n test needs."""

from __future__ import annotations

import json
import sys

from cli.arguments import positive_float


def add_parser(subparsers) -> None:
    exp = subparsers.add_parser("experiment", help="experiments: plan one (sample size and duration)")
    exp_sub = exp.add_subparsers(dest="action", required=True)
    plan = exp_sub.add_parser("plan", help="users per arm and days for a baseline rate and a detectable effect")
    plan.add_argument("--baseline", type=float, required=True, help="the control's conversion rate, e.g. 0.05")
    plan.add_argument(
        "--mde",
        type=float,
        required=True,
        help="minimum detectable effect, relative: 0.1 means 10%% better than the baseline",
    )
    plan.add_argument("--alpha", type=float, default=0.05, help="false positive rate (default 0.05, two-sided)")
    plan.add_argument("--power", type=float, default=0.8, help="chance to detect the effect (default 0.8)")
    plan.add_argument("--arms", type=int, default=2, help="arms, control included (default 2)")
    plan.add_argument("--daily-users", type=positive_float, help="new users a day, for the duration")
    plan.add_argument("--share", type=float, default=1.0, help="share of traffic in the experiment (default 1.0)")


def run(settings, args) -> int:
    from engine.experiments.statistics import plan_duration, plan_sample_size

    if args.action != "plan":  # pragma: no cover - argparse only offers plan
        raise AssertionError(args.action)
    try:
        per_arm = plan_sample_size(args.baseline, args.mde, alpha=args.alpha, power=args.power, arms=args.arms)
        days = plan_duration(per_arm, args.arms, args.daily_users, args.share) if args.daily_users is not None else None
    except ValueError as exc:
        print(f"tailor experiment plan: {exc}", file=sys.stderr)
        return 2
    plan = {
        "baseline": args.baseline,
        "mde_relative": args.mde,
        "treated_rate": round(args.baseline * (1 + args.mde), 6),
        "alpha": args.alpha,
        "power": args.power,
        "arms": args.arms,
        "per_arm": per_arm,
        "total": per_arm * args.arms,
        "daily_users": args.daily_users,
        "share_in_experiment": args.share,
        "days": days,
        "test": "two-sided two-proportion z-test"
        + (f", alpha / {args.arms - 1} per comparison (Bonferroni)" if args.arms > 2 else ""),
    }
    print(json.dumps(plan))
    return 0

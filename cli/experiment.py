"""``tailor experiment plan``: how many users, and how many days, an A/B/n test needs."""

from __future__ import annotations

import json
import sys

from config.settings import Settings
from engine.experiments.assignment import plan_duration, plan_sample_size


def run_experiment(settings: Settings, args) -> int:
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

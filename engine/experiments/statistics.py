"""Experiments: what the numbers say.

Statistics take plain counts (an `ArmStats` per arm) and work on numpy arrays as
well as on numbers, so a simulation of thousands of experiments is one call.
Convention: every two-sample function takes the control first, the treatment
second, and its statistic is positive when the treatment is higher. `analyze`
ties them into one `ExperimentReport`. Who sees which arm is
`engine.experiments.assignment`.

Examples
--------
>>> z, p = two_proportion_ztest(500, 10_000, 580, 10_000)
>>> round(z, 3), round(p, 4)
(2.503, 0.0123)
>>> plan_sample_size(0.10, 0.10)  # baseline 10%, +10% relative, alpha 0.05, power 0.8
14751
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
from scipy import stats as sps

#: Sample-ratio-mismatch alarm threshold on the chi-square p-value.
SRM_THRESHOLD = 0.001


# --------------------------------------------------------------------------- counts


class ArmStats(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What one arm saw: exposed users, converting users, and a per-user value's sums.

    ``conversions`` counts users (a user converting twice counts once), and the
    value sums are over each exposed user's total value (zero for non-buyers), so
    a rate stays in [0, 1] and the variance is per user, as the tests assume.

    >>> s = ArmStats(arm="control")
    >>> s.update(True, 30.0); s.update(False); s.update(True, 10.0)
    >>> s.n, s.conversions, round(s.rate, 3), round(s.value_mean, 2), round(s.value_variance, 2)
    (3, 2, 0.667, 13.33, 233.33)
    """

    arm: str
    n: int = 0
    conversions: int = 0
    value_sum: float = 0.0
    value_sum_sq: float = 0.0

    def __post_init__(self):
        if not (0 <= self.conversions <= self.n):
            raise ValueError(f"arm {self.arm!r}: need 0 <= conversions <= n, got {self.conversions} of {self.n}")
        if not (math.isfinite(self.value_sum) and math.isfinite(self.value_sum_sq) and self.value_sum_sq >= 0):
            raise ValueError(f"arm {self.arm!r}: value sums must be finite and the sum of squares >= 0")

    def update(self, converted: bool, value: float = 0.0) -> None:
        """Count one exposed user, whether they converted and their total value."""
        self.n += 1
        self.conversions += bool(converted)
        self.value_sum += value
        self.value_sum_sq += value * value

    @property
    def rate(self) -> float:
        return float(self.conversions / self.n) if self.n else 0.0

    @property
    def value_mean(self) -> float:
        return float(self.value_sum / self.n) if self.n else 0.0

    @property
    def value_variance(self) -> float:
        """Sample variance (ddof 1) of the per-user value; 0 below two users."""
        if self.n < 2:
            return 0.0
        return float(max(self.value_sum_sq - self.value_sum**2 / self.n, 0.0) / (self.n - 1))


# --------------------------------------------------------------------------- tests


def _out(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


def _counts(x, n, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, n = np.asarray(x, dtype=np.float64), np.asarray(n, dtype=np.float64)
    if np.any(n <= 0) or np.any(x < 0) or np.any(x > n):
        raise ValueError(f"{what}: need 0 <= successes <= n and n > 0")
    return x, n


def rate_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a rate; ``(0, 1)`` when ``n`` is 0.

    >>> tuple(round(v, 4) for v in rate_ci(10, 100))
    (0.0552, 0.1744)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    x, n = _counts(successes, n, "rate_ci")
    z = sps.norm.ppf(0.5 + confidence / 2)
    centre = (x + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * np.sqrt(x * (n - x) / n + z * z / 4)
    return _out(np.maximum(centre - half, 0.0)), _out(np.minimum(centre + half, 1.0))


def two_proportion_ztest(x_c, n_c, x_t, n_t):
    """Pooled two-proportion z-test: ``(z, two-sided p)``, z > 0 when the treatment converts more.

    Equals the chi-square test of the 2x2 table without continuity correction
    (``z**2`` is its statistic). Vectorized: arrays give arrays. No conversions
    at all (or only conversions) gives ``(0, 1)``.
    """
    x_c, n_c = _counts(x_c, n_c, "control")
    x_t, n_t = _counts(x_t, n_t, "treatment")
    pooled = (x_c + x_t) / (n_c + n_t)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (x_t / n_t - x_c / n_c) / se, 0.0)
    return _out(z), _out(2 * sps.norm.sf(np.abs(z)))


def welch_ttest_from_sums(n_c, s_c, ss_c, n_t, s_t, ss_t) -> tuple[float, float]:
    """Welch's t-test on a per-user value from counts, sums and sums of squares: ``(t, two-sided p)``.

    Same as ``scipy.stats.ttest_ind_from_stats(treatment..., control..., equal_var=False)``.

    >>> t, p = welch_ttest_from_sums(4, 10.0, 30.0, 4, 14.0, 54.0)  # [1,2,3,4] vs [2,3,4,5]
    >>> round(t, 4), round(p, 4)
    (1.0954, 0.3153)
    """
    if n_c < 2 or n_t < 2:
        raise ValueError(f"Welch's t-test needs at least 2 users per arm, got {n_c} and {n_t}")
    v_c = max(ss_c - s_c * s_c / n_c, 0.0) / (n_c - 1) / n_c
    v_t = max(ss_t - s_t * s_t / n_t, 0.0) / (n_t - 1) / n_t
    diff = s_t / n_t - s_c / n_c
    if v_c + v_t == 0:
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    t = float(diff / math.sqrt(v_c + v_t))
    df = (v_c + v_t) ** 2 / (v_c**2 / (n_c - 1) + v_t**2 / (n_t - 1))
    return t, float(2 * sps.t.sf(abs(t), df))


def beta_binomial(
    x_c: int, n_c: int, x_t: int, n_t: int, draws: int = 100_000, seed: int | None = 0, prior=(1.0, 1.0)
) -> tuple[float, float]:
    """Bayesian read-out under Beta priors: ``(chance the treatment beats control, expected loss)``.

    The expected loss is ``E[max(rate_c - rate_t, 0)]``: the conversion rate given
    up, on average, by shipping the treatment. Monte Carlo over ``draws`` pairs;
    its standard error on the chance is at most ``0.5 / sqrt(draws)``.

    >>> chance, loss = beta_binomial(100, 1000, 130, 1000)
    >>> round(chance, 2), loss < 0.001
    (0.98, True)
    """
    _counts([x_c, x_t], [n_c, n_t], "beta_binomial")
    a, b = prior
    if a <= 0 or b <= 0 or draws < 1:
        raise ValueError(f"prior parameters must be > 0 and draws >= 1, got prior={prior}, draws={draws}")
    rng = np.random.default_rng(seed)
    rate_c = rng.beta(a + x_c, b + n_c - x_c, draws)
    rate_t = rng.beta(a + x_t, b + n_t - x_t, draws)
    return float(np.mean(rate_t > rate_c)), float(np.mean(np.maximum(rate_c - rate_t, 0.0)))


def srm_check(observed_counts: Sequence[int], expected_weights: Sequence[float], threshold: float = SRM_THRESHOLD):
    """Sample-ratio mismatch: ``(chi2, p, alarm)``; alarm when ``p < threshold``.

    An alarm means the split itself is broken (a bug in assignment, logging or
    bot filtering), so the experiment's results cannot be trusted.

    >>> chi2, p, alarm = srm_check([52_000, 48_000], [1, 1])
    >>> round(chi2, 1), alarm
    (160.0, True)
    """
    observed = np.asarray(observed_counts, dtype=np.float64)
    weights = np.asarray(expected_weights, dtype=np.float64)
    if observed.shape != weights.shape or observed.ndim != 1 or observed.size < 2:
        raise ValueError("need one count and one weight per arm, for at least 2 arms")
    if np.any(weights <= 0) or np.any(observed < 0) or observed.sum() == 0:
        raise ValueError("weights must be > 0 and counts >= 0, with at least one count")
    chi2, p = sps.chisquare(observed, weights / weights.sum() * observed.sum())
    return float(chi2), float(p), bool(p < threshold)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (controls the family-wise error rate), in input order.

    >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = _pvalues(pvalues)
    m, order = p.size, np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum((m - np.arange(m)) * p[order], 1.0))
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (controls the false discovery rate), in input order.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.02, 0.04, 0.04, 0.02]
    """
    p = _pvalues(pvalues)
    m, order = p.size, np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def _pvalues(pvalues) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any(~((p >= 0) & (p <= 1))):
        raise ValueError("p-values must be a 1-d sequence of numbers in [0, 1]")
    return p


def msprt_pvalue(x_c, n_c, x_t, n_t, tau: float = 0.01, previous=1.0):
    """Always-valid p-value of a mixture SPRT on the difference of two rates; look as often as you like.

    Normal approximation (Johari et al., "Peeking at A/B tests", 2017): the rate
    difference is compared with a normal mixture of alternatives of standard
    deviation ``tau`` (in rate units: about the effect you hope to detect, e.g.
    0.01 for 5% -> 6%). The p-value is ``min(previous, 1 / likelihood ratio)`` on
    cumulative counts; pass each look's result as the next ``previous`` and it
    only decreases. Stopping the first time it is below alpha keeps the false
    positive rate at most alpha however many looks. Vectorized like
    `two_proportion_ztest`.

    >>> p1 = msprt_pvalue(250, 5_000, 300, 5_000)
    >>> p2 = msprt_pvalue(500, 10_000, 620, 10_000, previous=p1)
    >>> round(p1, 3), round(p2, 4), p2 <= p1
    (0.329, 0.0068, True)
    """
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive number (a spread of rate differences), got {tau}")
    x_c, n_c = _counts(x_c, n_c, "control")
    x_t, n_t = _counts(x_t, n_t, "treatment")
    pooled = (x_c + x_t) / (n_c + n_t)
    v = pooled * (1 - pooled) * (1 / n_c + 1 / n_t)
    diff = x_t / n_t - x_c / n_c
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = np.where(v > 0, 0.5 * np.log(v / (v + t2)) + t2 * diff * diff / (2 * v * (v + t2)), 0.0)
    return _out(np.minimum(np.asarray(previous, dtype=np.float64), np.minimum(np.exp(-log_lr), 1.0)))


# --------------------------------------------------------------------------- planning


def plan_sample_size(
    baseline: float, mde_relative: float, alpha: float = 0.05, power: float = 0.8, arms: int = 2
) -> int:
    """Users per arm for a two-sided two-proportion test to detect ``baseline * (1 + mde_relative)``.

    With more than two arms, each treatment is compared with the control at
    ``alpha / (arms - 1)`` (Bonferroni; Holm needs no more).

    >>> plan_sample_size(0.05, 0.20), plan_sample_size(0.05, 0.20, arms=3)
    (8158, 9880)
    """
    if not 0 < baseline < 1:
        raise ValueError(f"baseline is a rate in (0, 1), got {baseline}")
    treated = baseline * (1 + mde_relative)
    if mde_relative == 0 or not 0 < treated < 1:
        raise ValueError(f"mde_relative must be non-zero and keep the rate in (0, 1), got {mde_relative}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    if not isinstance(arms, int) or arms < 2:
        raise ValueError(f"arms must be an int >= 2 (control included), got {arms!r}")
    z_alpha = sps.norm.isf(alpha / (arms - 1) / 2)
    z_beta = sps.norm.ppf(power)
    mean = (baseline + treated) / 2
    spread = z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_beta * math.sqrt(
        baseline * (1 - baseline) + treated * (1 - treated)
    )
    return math.ceil(spread**2 / (treated - baseline) ** 2)


def plan_duration(n_per_arm: int, arms: int, daily_users: float, share_in_experiment: float = 1.0) -> int:
    """Whole days until every arm has ``n_per_arm`` users, at ``daily_users`` *new* users a day.

    ``share_in_experiment`` is the part of traffic that enters the arms (after
    holdout and ramp-up). Round up to whole weeks for weekly seasonality.

    >>> plan_duration(14_751, 2, daily_users=10_000, share_in_experiment=0.5)
    6
    """
    if n_per_arm < 1 or arms < 1 or daily_users <= 0 or not 0 < share_in_experiment <= 1:
        raise ValueError("need n_per_arm >= 1, arms >= 1, daily_users > 0 and share_in_experiment in (0, 1]")
    return math.ceil(n_per_arm * arms / (daily_users * share_in_experiment))


# --------------------------------------------------------------------------- bandit


def thompson_allocation(
    stats: Sequence[tuple[int, int]],
    floor: float = 0.05,
    draws: int = 10_000,
    seed: int | None = None,
    prior=(1.0, 1.0),
) -> list[float]:
    """Traffic shares by Thompson sampling: how often each arm is best under its Beta posterior.

    ``stats`` holds ``(successes, failures)`` per arm. Every arm gets at least
    ``floor`` (so a losing arm keeps being measured); the rest is shared in
    proportion to the win rates. Meant for a content slot whose variant may change
    from one impression to the next: moving weights on a sticky `Experiment`
    moves users.

    >>> thompson_allocation([(50, 950), (80, 920), (5, 95)], floor=0.05, seed=1)  # arm 2: little data
    [0.05, 0.781210542138, 0.168789457862]
    >>> thompson_allocation([(50, 950), (80, 920), (40, 960)], floor=0.05, seed=1)
    [0.05, 0.9, 0.05]
    """
    s = np.asarray(stats, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or s.shape[0] < 1 or np.any(s < 0):
        raise ValueError("stats must be one (successes, failures) pair of counts >= 0 per arm")
    k = s.shape[0]
    if not 0 <= floor <= 1 / k:
        raise ValueError(f"floor must be in [0, 1/{k}] for {k} arms, got {floor}")
    if draws < 1 or prior[0] <= 0 or prior[1] <= 0:
        raise ValueError("draws must be >= 1 and the prior parameters > 0")
    rng = np.random.default_rng(seed)
    samples = rng.beta(prior[0] + s[:, 0], prior[1] + s[:, 1], size=(draws, k))
    wins = np.bincount(samples.argmax(axis=1), minlength=k) / draws
    # Water-filling: arms under the floor are raised to it, the others share what is left.
    pinned = np.zeros(k, dtype=bool)
    while True:
        budget = 1.0 - floor * pinned.sum()
        mass = wins[~pinned].sum()
        free = wins * budget / mass if mass > 0 else np.full(k, budget / (~pinned).sum())
        shares = np.where(pinned, floor, free)
        low = ~pinned & (shares < floor - 1e-12)  # tolerance: floor == 1/k must not pin every arm
        if not low.any():
            return [round(float(v), 12) for v in shares]
        pinned |= low


# --------------------------------------------------------------------------- report


class ArmResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One arm's read-out; comparisons (None for the control) are against the control."""

    arm: str
    n: int
    conversions: int
    rate: float
    ci_low: float
    ci_high: float
    value_mean: float
    #: Relative difference of rates, ``rate / control rate - 1``.
    lift: float | None = None
    z: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    #: Always-valid mSPRT p-value at this look (1 / likelihood ratio, not carried over from earlier
    #: looks): stopping the first time it is below alpha keeps the false positive rate at most alpha.
    sequential_p_value: float | None = None
    value_t: float | None = None
    value_p_value: float | None = None
    value_p_adjusted: float | None = None
    chance_to_beat_control: float | None = None
    expected_loss: float | None = None
    #: Adjusted conversion p-value below alpha (None for the control).
    significant: bool | None = None


class ExperimentReport(msgspec.Struct, frozen=True, kw_only=True):
    control: str
    alpha: float
    correction: str
    #: The sample-ratio check (None: fewer than two open arms to compare).
    srm_chi2: float | None
    srm_p_value: float | None
    srm_alarm: bool | None
    #: A list, not a tuple: Litestar documents a variadic tuple's items as ``oneOf [X, {}]``.
    arms: list[ArmResult]


def analyze(
    arms: Sequence[ArmStats],
    control: str,
    weights: Sequence[float] | None = None,
    alpha: float = 0.05,
    correction: Literal["holm", "bh", "none"] = "holm",
    confidence: float = 0.95,
    tau: float = 0.01,
    draws: int = 100_000,
    seed: int | None = 0,
) -> ExperimentReport:
    """Every number of the results page, with the conversion and value p-values corrected together.

    ``weights`` are the arms' allocation weights (equal when omitted), for the
    sample-ratio check; an arm of weight 0 (paused: its users came before) is left
    out of it, and with fewer than two arms left there is no check (``srm_*`` None).
    The correction runs over all treatments and both metrics (conversion, and value
    where both arms have two users or more).

    >>> r = analyze([ArmStats(arm="a", n=10_000, conversions=500), ArmStats(arm="b", n=10_000, conversions=580)], "a")
    >>> r.arms[1].significant, round(r.arms[1].lift, 2), r.srm_alarm
    (True, 0.16, False)
    """
    by_name = {a.arm: a for a in arms}
    if control not in by_name or len(by_name) != len(arms) or len(arms) < 2:
        raise ValueError(f"need at least 2 arms with unique names, one of them the control {control!r}")
    if correction not in ("holm", "bh", "none"):
        raise ValueError(f"correction must be 'holm', 'bh' or 'none', got {correction!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    weights = [1.0] * len(arms) if weights is None else list(weights)
    if len(weights) != len(arms) or any(w < 0 for w in weights):
        raise ValueError("need one weight >= 0 per arm")
    open_arms = [(a.n, w) for a, w in zip(arms, weights) if w > 0]
    chi2 = srm_p = alarm = None
    if len(open_arms) >= 2 and sum(n for n, _ in open_arms) > 0:
        chi2, srm_p, alarm = srm_check([n for n, _ in open_arms], [w for _, w in open_arms])
    c = by_name[control]
    rows, tests = [], []  # tests: (row index, field, p-value) for the correction
    for a in arms:
        low, high = rate_ci(a.conversions, a.n, confidence)
        row = {"arm": a.arm, "n": int(a.n), "conversions": int(a.conversions), "rate": a.rate}
        row |= {"ci_low": low, "ci_high": high, "value_mean": a.value_mean}
        if a.arm != control and a.n > 0 and c.n > 0:
            row["lift"] = a.rate / c.rate - 1 if c.rate > 0 else None
            row["z"], row["p_value"] = two_proportion_ztest(c.conversions, c.n, a.conversions, a.n)
            row["sequential_p_value"] = msprt_pvalue(c.conversions, c.n, a.conversions, a.n, tau=tau)
            chance, loss = beta_binomial(c.conversions, c.n, a.conversions, a.n, draws=draws, seed=seed)
            row["chance_to_beat_control"], row["expected_loss"] = chance, loss
            tests.append((len(rows), "p_adjusted", row["p_value"]))
            if a.n >= 2 and c.n >= 2:
                row["value_t"], row["value_p_value"] = welch_ttest_from_sums(
                    c.n, c.value_sum, c.value_sum_sq, a.n, a.value_sum, a.value_sum_sq
                )
                tests.append((len(rows), "value_p_adjusted", row["value_p_value"]))
        rows.append(row)
    if tests:
        raw = [p for _, _, p in tests]
        adjusted = holm(raw) if correction == "holm" else benjamini_hochberg(raw) if correction == "bh" else raw
        for (i, field, _), p in zip(tests, adjusted, strict=True):
            rows[i][field] = float(p)
    for row in rows:
        if row.get("p_adjusted") is not None:
            row["significant"] = row["p_adjusted"] < alpha
    return ExperimentReport(
        control=control,
        alpha=alpha,
        correction=correction,
        srm_chi2=chi2,
        srm_p_value=srm_p,
        srm_alarm=alarm,
        arms=[ArmResult(**row) for row in rows],
    )

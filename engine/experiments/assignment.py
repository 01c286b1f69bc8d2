"""Experiments: who sees which arm, and what the numbers say.

Assignment is deterministic and sticky, with no state to store. A user's key is
the 64-bit BLAKE2b hash of ``f"{salt}:{user_id}"``. The holdout (default content)
takes the users whose holdout draw, a uniform number in (0, 1) mixed from the key,
falls below the holdout share. Every other user goes to the arm with the smallest
``-ln(u_arm) / weight``, where ``u_arm`` is a uniform number mixed from the key and
the arm's *name* (weighted rendezvous hashing, an exponential race): arm i wins
with probability ``w_i / sum(w)`` exactly, not rounded to buckets. What that
guarantees:

- the same user, salt and allocation give the same arm in every process, on every
  machine and Python version (no ``hash()``, no random state);
- the order of the arms does not matter, and multiplying every weight by one factor
  changes nothing;
- when weights change, a user moves from arm a to arm b only if b's weight grew by
  a larger factor than a's (an added arm grew from 0, a removed one fell to 0). So
  raising one arm's weight moves users only *into* that arm, adding an arm moves
  users only into the new arm, and lowering, zeroing or removing an arm moves only
  *its* users; in these one-arm changes the share of users who move is exactly the
  change in that arm's share (in expectation), the least any scheme can move;
- the holdout draw is independent of the arm draw: growing the holdout only moves
  users into it, shrinking it only lets holdout users out, and a user outside the
  holdout before and after keeps their arm (under unchanged weights);
- a new salt reshuffles everyone: use one to start a fresh experiment.

`bucket` exposes the same hash cut into ``buckets`` equal buckets for coarse uses
(rollout percentages, sharding, logs).

Statistics take plain counts (an `ArmStats` per arm) and work on numpy arrays as
well as on numbers, so a simulation of thousands of experiments is one call.
Convention: every two-sample function takes the control first, the treatment
second, and its statistic is positive when the treatment is higher. `analyze`
ties them into one `ExperimentReport`.

Examples
--------
>>> exp = Experiment("subject_line", Allocation((Arm("control"), Arm("emoji")), holdout=0.1))
>>> [assign(f"user-{i}", exp) for i in range(9)]
['control', 'emoji', 'emoji', 'control', 'control', 'control', 'emoji', 'holdout', 'holdout']
>>> z, p = two_proportion_ztest(500, 10_000, 580, 10_000)
>>> round(z, 3), round(p, 4)
(2.503, 0.0123)
>>> plan_sample_size(0.10, 0.10)  # baseline 10%, +10% relative, alpha 0.05, power 0.8
14751
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Literal

import msgspec
import numpy as np
from scipy import stats as sps

#: What `assign` returns for a user in the holdout (who sees default content).
HOLDOUT = "holdout"
#: Sample-ratio-mismatch alarm threshold on the chi-square p-value.
SRM_THRESHOLD = 0.001
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


# --------------------------------------------------------------------------- assignment


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def bucket(user_id: str, salt: str, buckets: int = 10_000) -> int:
    """The bucket, in ``range(buckets)``, of ``user_id`` under ``salt``: stable everywhere.

    >>> bucket("user-1", "exp-a"), bucket("user-1", "exp-a"), bucket("user-1", "exp-b")
    (7368, 7368, 9046)
    """
    if not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be a positive int, got {buckets!r}")
    return _hash64(f"{salt}:{user_id}") % buckets


def _keys(user_ids: Sequence[str], salt: str) -> np.ndarray:
    digests = b"".join(hashlib.blake2b(f"{salt}:{u}".encode(), digest_size=8).digest() for u in user_ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _uniform(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, then the top 53 bits as a float strictly inside (0, 1)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


_M64 = (1 << 64) - 1


def _uniform_one(z: int) -> float:
    """`_uniform` for one key, in plain Python ints (one numpy call costs microseconds; this is ~1 µs)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    z ^= z >> 31
    return ((z >> 11) + 0.5) * 2.0**-53


@functools.lru_cache(maxsize=4096)
def _label_key(text: str) -> int:
    return _hash64(text)


@functools.lru_cache(maxsize=4096)
def _arm_keys(salt: str, names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(_hash64(f"{salt}:arm:{name}") for name in names)


def _race_one(key: int, salt: str, names: Sequence[str], weights: Sequence[float]) -> int:
    """`_race` for one key: the index of the winning label."""
    best, best_score = 0, math.inf
    for i, (label_key, weight) in enumerate(zip(_arm_keys(salt, tuple(names)), weights)):
        if weight <= 0:
            continue
        score = -math.log(_uniform_one(key ^ label_key)) / weight
        if score < best_score:
            best, best_score = i, score
    return best


def _race(keys: np.ndarray, salt: str, names: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Index of the winning label per key: weighted rendezvous hashing."""
    label_keys = np.array([_hash64(f"{salt}:arm:{name}") for name in names], dtype=np.uint64)
    u = _uniform(keys[:, None] ^ label_keys[None, :])
    with np.errstate(divide="ignore"):
        scores = -np.log(u) / np.asarray(weights, dtype=np.float64)
    return scores.argmin(axis=1)


class Arm(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One variant of an experiment; ``weight`` is relative (0 pauses the arm)."""

    name: str
    weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or self.name == HOLDOUT:
            raise ValueError(f"an arm name must be a non-blank string other than {HOLDOUT!r}, got {self.name!r}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"arm {self.name!r}: weight must be finite and >= 0, got {self.weight}")


class Allocation(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The arms with their weights, and the share of users held out on default content."""

    arms: tuple[Arm, ...]
    holdout: float = 0.0

    def __post_init__(self):
        names = [a.name for a in self.arms]
        if not names:
            raise ValueError("an allocation needs at least one arm")
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if not any(a.weight > 0 for a in self.arms):
            raise ValueError("at least one arm needs a weight above 0")
        if not (0.0 <= self.holdout < 1.0):
            raise ValueError(f"holdout is a share in [0, 1), got {self.holdout}")

    @property
    def shares(self) -> dict[str, float]:
        """The expected share of all users per arm, and of the holdout.

        >>> Allocation((Arm("a", 3), Arm("b", 1)), holdout=0.2).shares
        {'a': 0.6000000000000001, 'b': 0.2, 'holdout': 0.2}
        """
        total = sum(a.weight for a in self.arms)
        out = {a.name: (1.0 - self.holdout) * a.weight / total for a in self.arms}
        out[HOLDOUT] = self.holdout
        return out


class Experiment(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A named experiment; its ``salt`` (the name when empty) seeds assignment."""

    name: str
    allocation: Allocation
    salt: str = ""

    @property
    def seed(self) -> str:
        return self.salt or self.name


def assign_many(user_ids: Sequence[str], experiment: Experiment) -> list[str]:
    """The arm (or `HOLDOUT`) of each user, in one vectorized pass; same answers as `assign`."""
    seed, alloc = experiment.seed, experiment.allocation
    keys = _keys(user_ids, seed)
    picks = _race(keys, seed, [a.name for a in alloc.arms], [a.weight for a in alloc.arms])
    if alloc.holdout > 0:
        held = _uniform(keys ^ np.uint64(_hash64(f"{seed}:holdout"))) < alloc.holdout
        picks = np.where(held, len(alloc.arms), picks)
    labels = np.array([a.name for a in alloc.arms] + [HOLDOUT], dtype=object)
    return labels[picks].tolist()


def assign(user_id: str, experiment: Experiment) -> str:
    """The arm ``user_id`` sees in ``experiment``, or `HOLDOUT` (see the module notes for stickiness).

    >>> exp = Experiment("hero", Allocation((Arm("a", 1), Arm("b", 1))))
    >>> assign("user-7", exp) == assign("user-7", exp)
    True
    """
    # The same arithmetic as `assign_many`, on plain ints: a request assigns one user (a test pins them equal).
    seed, alloc = experiment.seed, experiment.allocation
    key = _hash64(f"{seed}:{user_id}")
    if alloc.holdout > 0 and _uniform_one(key ^ _label_key(f"{seed}:holdout")) < alloc.holdout:
        return HOLDOUT
    arms = alloc.arms
    return arms[_race_one(key, seed, [a.name for a in arms], [a.weight for a in arms])].name


def assign_factorial(user_id: str, salt: str, factors: dict[str, Sequence[str]]) -> dict[str, str]:
    """One level per factor, levels equally likely, factors independent (a salt per factor).

    Adding a level to a factor moves users only into the new level.

    >>> assign_factorial("user-1", "hero-v2", {"headline": ["short", "long"], "image": ["a", "b", "c"]})
    {'headline': 'short', 'image': 'c'}
    """
    out = {}
    for factor, levels in factors.items():
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"factor {factor!r} needs at least one level and no repeats, got {list(levels)}")
        factor_salt = f"{salt}:{factor}"
        out[factor] = levels[_race_one(_hash64(f"{factor_salt}:{user_id}"), factor_salt, levels, [1.0] * len(levels))]
    return out


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

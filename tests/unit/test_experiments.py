"""Experiments: sticky assignment, and statistics checked against scipy and by simulation."""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
import pytest
from scipy import integrate, stats

from engine.experiments.assignment import (
    HOLDOUT,
    Allocation,
    Arm,
    Experiment,
    assign,
    assign_factorial,
    assign_many,
    bucket,
)
from engine.experiments.statistics import (
    ArmStats,
    analyze,
    benjamini_hochberg,
    beta_binomial,
    holm,
    msprt_pvalue,
    plan_duration,
    plan_sample_size,
    rate_ci,
    srm_check,
    thompson_allocation,
    two_proportion_ztest,
    welch_ttest_from_sums,
)

USERS = [f"p_user{i:06d}" for i in range(20_000)]


def experiment(*weights: float, names: str = "ABCDEFGHIJ", holdout: float = 0.0, salt: str = "exp-1") -> Experiment:
    arms = tuple(Arm(name, w) for name, w in zip(names, weights, strict=False))
    return Experiment("hero", Allocation(arms, holdout=holdout), salt=salt)


def arms_of(exp: Experiment, users=USERS) -> np.ndarray:
    return np.array(assign_many(users, exp))


# --------------------------------------------------------------------------- assignment


def test_bucket_is_blake2b_of_salt_and_user():
    digest = hashlib.blake2b(b"exp-a:user-1", digest_size=8).digest()
    assert bucket("user-1", "exp-a") == int.from_bytes(digest, "little") % 10_000
    assert all(0 <= bucket(u, "s", 7) < 7 for u in USERS[:200])
    with pytest.raises(ValueError, match="buckets"):
        bucket("user-1", "exp-a", 0)


def test_assignment_is_uniform_over_ten_equal_arms():
    users = [f"p_user{i:07d}" for i in range(200_000)]
    counts = np.unique(arms_of(experiment(*[1.0] * 10), users), return_counts=True)[1]
    assert counts.size == 10
    assert stats.chisquare(counts).pvalue > 0.001


def test_weights_and_holdout_give_their_shares():
    exp = experiment(5, 3, 2, holdout=0.1)
    got = arms_of(exp, [f"p_user{i:07d}" for i in range(100_000)])
    held = np.mean(got == HOLDOUT)
    assert abs(held - 0.1) < 4 * np.sqrt(0.1 * 0.9 / got.size)
    counts = [int(np.sum(got == name)) for name in "ABC"]
    assert not srm_check(counts, [5, 3, 2])[2]
    assert exp.allocation.shares == pytest.approx({"A": 0.45, "B": 0.27, "C": 0.18, HOLDOUT: 0.1})


def test_assignment_is_sticky_across_calls_and_processes_of_the_same_config():
    exp = experiment(1, 1, 1, holdout=0.2)
    again = msgspec.json.decode(msgspec.json.encode(exp), type=Experiment)  # as stored and reloaded
    first = [assign(u, exp) for u in USERS[:300]]
    assert first == [assign(u, again) for u in USERS[:300]] == assign_many(USERS[:300], exp)


def test_raising_one_arm_moves_users_only_into_that_arm_and_only_as_many_as_needed():
    before, after = arms_of(experiment(1, 1, 1)), arms_of(experiment(1, 2, 1))
    moved = before != after
    assert set(after[moved]) == {"B"}
    assert np.all(after[before == "B"] == "B")
    assert moved.mean() == pytest.approx(1 / 2 - 1 / 3, abs=0.01)  # exactly B's gain in share


def test_adding_an_arm_moves_users_only_into_the_new_arm():
    before, after = arms_of(experiment(1, 1, 1)), arms_of(experiment(1, 1, 1, 1))
    moved = before != after
    assert set(after[moved]) == {"D"}
    assert moved.mean() == pytest.approx(1 / 4, abs=0.01)


def test_lowering_zeroing_or_removing_an_arm_moves_only_its_users():
    before = arms_of(experiment(1, 1, 1))
    lowered = arms_of(experiment(1, 0.5, 1))
    zeroed = arms_of(experiment(1, 0, 1))
    removed = arms_of(Experiment("hero", Allocation((Arm("A"), Arm("C"))), salt="exp-1"))
    for after in (lowered, zeroed, removed):
        assert set(before[before != after]) == {"B"}
    assert "B" not in set(zeroed)
    assert np.array_equal(zeroed, removed)


def test_arm_order_and_a_common_scale_of_the_weights_change_nothing():
    base = arms_of(experiment(1, 2, 3))
    reordered = Experiment("hero", Allocation((Arm("C", 3), Arm("A", 1), Arm("B", 2))), salt="exp-1")
    assert np.array_equal(base, arms_of(reordered))
    assert np.array_equal(base, arms_of(experiment(10, 20, 30)))


def test_any_weight_change_moves_a_user_only_towards_an_arm_that_grew_by_a_larger_factor():
    rng = np.random.default_rng(3)
    old, new = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    before, after = arms_of(experiment(*old)), arms_of(experiment(*new))
    growth = dict(zip("ABCD", new / old, strict=True))
    moved = np.flatnonzero(before != after)
    assert moved.size > 0
    assert all(growth[after[i]] > growth[before[i]] for i in moved)


def test_holdout_changes_move_users_only_into_or_out_of_the_holdout():
    small, large = arms_of(experiment(1, 1, holdout=0.1)), arms_of(experiment(1, 1, holdout=0.2))
    assert np.all(large[small == HOLDOUT] == HOLDOUT)
    outside = (small != HOLDOUT) & (large != HOLDOUT)
    assert np.array_equal(small[outside], large[outside])
    none = arms_of(experiment(1, 1))
    assert np.array_equal(none[small != HOLDOUT], small[small != HOLDOUT])


def test_a_new_salt_reshuffles_users():
    a, b = arms_of(experiment(1, 1)), arms_of(experiment(1, 1, salt="exp-2"))
    assert np.mean(a == b) == pytest.approx(0.5, abs=0.02)


def test_factorial_levels_are_uniform_and_factors_independent():
    factors = {"headline": ["short", "long"], "image": ["a", "b", "c"]}
    got = [assign_factorial(u, "hero-v2", factors) for u in USERS[:4000]]
    table = np.zeros((2, 3))
    for g in got:
        table[factors["headline"].index(g["headline"]), factors["image"].index(g["image"])] += 1
    assert stats.chi2_contingency(table, correction=False).pvalue > 0.001
    assert stats.chisquare(table.sum(axis=0)).pvalue > 0.001
    assert stats.chisquare(table.sum(axis=1)).pvalue > 0.001


def test_factorial_adding_a_level_moves_users_only_into_it_and_leaves_other_factors():
    before = [assign_factorial(u, "s", {"headline": ["x", "y"], "image": ["a", "b"]}) for u in USERS[:2000]]
    after = [assign_factorial(u, "s", {"headline": ["x", "y"], "image": ["a", "b", "c"]}) for u in USERS[:2000]]
    assert all(b["headline"] == a["headline"] for b, a in zip(before, after, strict=True))
    assert {a["image"] for b, a in zip(before, after, strict=True) if a["image"] != b["image"]} == {"c"}


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Arm("holdout"), "other than"),
        (lambda: Arm(" "), "non-blank"),
        (lambda: Arm("a", -1), "weight"),
        (lambda: Arm("a", float("nan")), "weight"),
        (lambda: Allocation(()), "at least one arm"),
        (lambda: Allocation((Arm("a"), Arm("a"))), "unique"),
        (lambda: Allocation((Arm("a", 0),)), "above 0"),
        (lambda: Allocation((Arm("a"),), holdout=1.0), "holdout"),
        (lambda: assign_factorial("u", "s", {"f": []}), "at least one level"),
    ],
)
def test_bad_allocations_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------------------------- statistics against scipy


def test_srm_alarms_on_a_52_48_split_and_not_on_a_fair_one():
    assert srm_check([52_000, 48_000], [1, 1])[2]
    chi2, p, alarm = srm_check([50_100, 49_900], [1, 1])
    assert not alarm and p > 0.1
    assert chi2 == pytest.approx(stats.chisquare([50_100, 49_900]).statistic)
    assert srm_check([60_000, 40_000], [3, 2])[2] is False


def test_two_proportion_ztest_matches_chi_square_without_continuity_correction():
    for x_c, n_c, x_t, n_t in [(500, 10_000, 580, 10_000), (120, 2_000, 95, 1_800), (7, 40, 15, 45)]:
        z, p = two_proportion_ztest(x_c, n_c, x_t, n_t)
        res = stats.chi2_contingency([[x_c, n_c - x_c], [x_t, n_t - x_t]], correction=False)
        assert p == pytest.approx(res.pvalue, rel=1e-9)
        assert z * z == pytest.approx(res.statistic, rel=1e-9)
        assert np.sign(z) == np.sign(x_t / n_t - x_c / n_c)
    z, p = two_proportion_ztest(np.array([500, 120]), np.array([10_000, 2_000]), np.array([580, 95]), [10_000, 1_800])
    assert z[0] == pytest.approx(two_proportion_ztest(500, 10_000, 580, 10_000)[0])
    assert two_proportion_ztest(0, 100, 0, 100) == (0.0, 1.0)


def test_welch_from_sums_matches_scipy():
    rng = np.random.default_rng(11)
    control, treatment = rng.gamma(2.0, 10.0, 300), rng.gamma(2.0, 11.5, 260)

    def sums(v):
        return v.size, v.sum(), (v * v).sum()

    t, p = welch_ttest_from_sums(*sums(control), *sums(treatment))
    ref = stats.ttest_ind(treatment, control, equal_var=False)
    assert (t, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
    ref2 = stats.ttest_ind_from_stats(
        treatment.mean(),
        treatment.std(ddof=1),
        treatment.size,
        control.mean(),
        control.std(ddof=1),
        control.size,
        equal_var=False,
    )
    assert (t, p) == pytest.approx((ref2.statistic, ref2.pvalue), rel=1e-9)


def test_wilson_interval_matches_scipy_and_a_known_value():
    assert rate_ci(10, 100) == pytest.approx((0.05523, 0.17437), abs=1e-5)
    for x, n, conf in [(10, 100, 0.95), (0, 50, 0.95), (37, 37, 0.9), (480, 10_000, 0.99)]:
        ref = stats.binomtest(x, n).proportion_ci(confidence_level=conf, method="wilson")
        assert rate_ci(x, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert rate_ci(0, 0) == (0.0, 1.0)


def test_beta_binomial_matches_numeric_integration():
    x_c, n_c, x_t, n_t = 100, 1_000, 112, 1_000
    post_c, post_t = stats.beta(1 + x_c, 1 + n_c - x_c), stats.beta(1 + x_t, 1 + n_t - x_t)
    chance = integrate.quad(lambda r: post_t.pdf(r) * post_c.cdf(r), 0, 1, points=[0.1])[0]
    # E[max(C - T, 0)] = integral of f_C(c) * (c F_T(c) - E[T; T < c]); E[T; T < c] = mean_T * I_c(a_T + 1, b_T).
    upper_t = stats.beta(2 + x_t, 1 + n_t - x_t)
    loss = integrate.quad(
        lambda c: post_c.pdf(c) * (c * post_t.cdf(c) - post_t.mean() * upper_t.cdf(c)), 0, 1, points=[0.1]
    )[0]
    got_chance, got_loss = beta_binomial(x_c, n_c, x_t, n_t, draws=200_000, seed=5)
    assert got_chance == pytest.approx(chance, abs=0.005)
    assert got_loss == pytest.approx(loss, rel=0.03)
    assert beta_binomial(x_c, n_c, x_t, n_t, seed=5) == beta_binomial(x_c, n_c, x_t, n_t, seed=5)


def test_holm_on_a_hand_example_and_bh_against_scipy():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]
    rng = np.random.default_rng(2)
    for p in ([0.01, 0.04, 0.03, 0.005], rng.uniform(0, 0.2, 25), [0.2]):
        assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p, method="bh"), rel=1e-12)
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_plan_sample_size_matches_the_textbook_formula():
    p1, p2 = 0.10, 0.11
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    expected = (z_a * np.sqrt(2 * 0.105 * 0.895) + z_b * np.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p2 - p1) ** 2
    assert plan_sample_size(0.10, 0.10) == int(np.ceil(expected)) == 14_751
    assert plan_sample_size(0.10, -0.10) > plan_sample_size(0.10, 0.10) * 0.9
    assert plan_sample_size(0.10, 0.10, power=0.9) > 14_751
    assert plan_duration(14_751, 2, daily_users=10_000, share_in_experiment=0.5) == 6
    with pytest.raises(ValueError, match="mde_relative"):
        plan_sample_size(0.6, 1.0)


# --------------------------------------------------------------------------- simulations


def test_a_20_percent_lift_is_found_at_the_planned_sample_size():
    n = plan_sample_size(0.05, 0.20)
    rng = np.random.default_rng(20)
    x_c, x_t = rng.binomial(n, 0.05, 400), rng.binomial(n, 0.06, 400)
    z, p = two_proportion_ztest(x_c, n, x_t, n)
    power = np.mean((p < 0.05) & (z > 0))
    assert 0.7 <= power <= 0.9


def test_an_a_a_test_keeps_its_false_positive_rate_near_alpha():
    rng = np.random.default_rng(21)
    x_c, x_t = rng.binomial(8_000, 0.05, 4_000), rng.binomial(8_000, 0.05, 4_000)
    assert np.mean(two_proportion_ztest(x_c, 8_000, x_t, 8_000)[1] < 0.05) == pytest.approx(0.05, abs=0.015)


def test_peeking_inflates_the_naive_test_but_not_the_msprt():
    rng = np.random.default_rng(22)
    reps, looks, step = 1_000, 10, 1_000
    x = rng.binomial(step, 0.05, size=(2, reps, looks)).cumsum(axis=2)
    n = step * np.arange(1, looks + 1)
    naive = np.mean((two_proportion_ztest(x[0], n, x[1], n)[1] < 0.05).any(axis=1))
    always_valid = np.mean((msprt_pvalue(x[0], n, x[1], n) < 0.05).any(axis=1))
    assert naive > 0.1  # about 0.2 with ten looks
    assert always_valid <= 0.05 + 0.01


def test_msprt_only_decreases_and_finds_a_real_lift():
    rng = np.random.default_rng(23)
    step, looks = plan_sample_size(0.05, 0.20) // 4, 12
    x = np.stack([rng.binomial(step, 0.05, (400, looks)), rng.binomial(step, 0.06, (400, looks))]).cumsum(axis=2)
    n = step * np.arange(1, looks + 1)
    p = np.ones(400)
    history = []
    for k in range(looks):
        p = msprt_pvalue(x[0, :, k], n[k], x[1, :, k], n[k], previous=p)
        history.append(p)
    assert np.all(np.diff(np.array(history), axis=0) <= 0)
    assert np.mean(p < 0.05) >= 0.8  # by three times the fixed-horizon sample size
    with pytest.raises(ValueError, match="tau"):
        msprt_pvalue(1, 10, 2, 10, tau=0)


def test_thompson_respects_the_floor_and_favours_the_better_arm():
    shares = thompson_allocation([(50, 950), (80, 920), (45, 955), (48, 952)], floor=0.05, seed=4)
    assert sum(shares) == pytest.approx(1.0)
    assert min(shares) >= 0.05 - 1e-12
    assert shares[1] == max(shares) and shares[1] > 0.5
    assert thompson_allocation([(0, 0), (0, 0)], floor=0.1, seed=1) == pytest.approx([0.5, 0.5], abs=0.02)
    assert thompson_allocation([(1, 1)], floor=0.3) == [1.0]
    with pytest.raises(ValueError, match="floor"):
        thompson_allocation([(1, 1), (1, 1), (1, 1)], floor=0.4)


# --------------------------------------------------------------------------- report


def test_arm_stats_accumulate_per_user_outcomes():
    s = ArmStats(arm="a")
    values = [0.0, 12.5, 0.0, 40.0]
    for v in values:
        s.update(v > 0, v)
    assert (s.n, s.conversions) == (4, 2)
    assert s.value_variance == pytest.approx(np.var(values, ddof=1))
    with pytest.raises(ValueError, match="conversions"):
        ArmStats(arm="a", n=1, conversions=2)


def test_analyze_corrects_across_arms_and_metrics_and_flags_srm():
    rng = np.random.default_rng(30)

    def arm(name, n, rate, mean):
        values = np.where(rng.random(n) < rate, rng.gamma(2.0, mean / 2, n), 0.0)
        return ArmStats(
            arm=name, n=n, conversions=int(np.sum(values > 0)), value_sum=values.sum(), value_sum_sq=(values**2).sum()
        )

    arms = [arm("control", 20_000, 0.05, 40.0), arm("b", 20_000, 0.065, 40.0), arm("c", 20_000, 0.05, 40.0)]
    report = analyze(arms, "control", correction="holm")
    by = {r.arm: r for r in report.arms}
    assert by["control"].p_value is None and by["control"].lift is None
    assert by["b"].significant and not by["c"].significant
    assert by["b"].chance_to_beat_control > 0.99 and by["b"].expected_loss < 1e-4
    raw = [by["b"].p_value, by["b"].value_p_value, by["c"].p_value, by["c"].value_p_value]
    adjusted = [by["b"].p_adjusted, by["b"].value_p_adjusted, by["c"].p_adjusted, by["c"].value_p_adjusted]
    assert adjusted == pytest.approx(holm(raw).tolist())
    assert not report.srm_alarm
    assert analyze(arms, "control", weights=[2, 1, 1]).srm_alarm
    msgspec.json.encode(report)  # the API can serve it as is
    with pytest.raises(ValueError, match="control"):
        analyze(arms, "nobody")


@pytest.mark.parametrize("weights, holdout", [((1, 1), 0.1), ((1, 2, 3, 0, 5, 1, 1, 1, 1, 2), 0.2), ((0, 1, 0.5), 0.0)])
def test_one_user_assignment_equals_the_vectorized_one(weights, holdout):
    # `assign` has its own scalar path (a request assigns one user); it must pick exactly what assign_many picks.
    exp = Experiment("scalar", Allocation(tuple(Arm(f"arm{i}", w) for i, w in enumerate(weights)), holdout=holdout))
    users = [f"user-{i}" for i in range(5000)]
    assert [assign(u, exp) for u in users] == assign_many(users, exp)

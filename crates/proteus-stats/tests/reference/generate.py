#!/usr/bin/env python3
"""Generates cases.json, the reference values the proteus-stats accuracy tests check.

Run from anywhere:

    pip install scipy statsmodels numpy
    python3 crates/proteus-stats/tests/reference/generate.py

Expected values come from scipy and statsmodels wherever they implement the method:

- Welch's t-test: scipy.stats.ttest_ind_from_stats(equal_var=False) on summaries and
  scipy.stats.ttest_ind(equal_var=False) on raw samples (statistic, p-value, df, and
  TtestResult.confidence_interval); intervals of summary cases use scipy.stats.t.ppf.
- Proportions: statsmodels.stats.proportion.test_proportions_2indep(method="wald") and
  confint_proportions_2indep(method="wald").
- CUPED: the adjusted per-unit values y - theta*(x - mean(x)) fed to scipy.stats.ttest_ind.
- SRM: scipy.stats.chisquare.
- Corrections: statsmodels.stats.multitest.multipletests(method="holm" / "fdr_bh").
- Power: statsmodels.stats.power.NormalIndPower (solve_power, polished with brentq on its own
  power function, and power).
- Distributions: scipy.stats.t / norm / chi2.

Where no library implements the method, the closed-form formula is evaluated here with scipy's
distributions, independently of the Rust code:

- Relative lift: delta method, var = se_t^2/c^2 + t^2 se_c^2/c^4.
- Ratio metrics: delta method (Deng, Knoblich and Lu 2018, "Applying the Delta Method in Metric
  Analytics", KDD), computed from numpy's sample variances and covariance.
- Confidence sequences: Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas (2023), "Time-uniform
  central limit theory and asymptotic confidence sequences", Annals of Statistics
  (arXiv:2103.06476): the two-sided normal-mixture asymptotic confidence sequence
  mu_hat +- sigma_hat * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha)),
  with rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / t_opt (the approximately optimal rho for
  t_opt, as in the paper's accompanying R code, best_rho2_approx); the p-value is the reciprocal of
  the mixture martingale sqrt(t rho^2 + 1) * exp(-rho^2 S^2 / (2 (t rho^2 + 1))), S = t mu_hat /
  sigma_hat, capped at 1.
- Bayesian: the conjugate normal-normal posterior; expected losses from the closed form
  sigma*(phi(a) + a*Phi(a)), cross-checked here against numerical integration (scipy.integrate.quad).

The Rust test (tests/it/reference.rs) checks every number to 1e-6 relative, with an absolute floor
of 1e-12 for values near zero: |got - expected| <= 1e-6 * |expected| + 1e-12.
"""

import json
import math
import os

import numpy as np
import scipy
import statsmodels
from scipy import integrate, stats
from scipy.optimize import brentq
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.json")
rng = np.random.default_rng(20261126)


def f(x):
    """A finite float for JSON, or None for an unbounded interval end."""
    x = float(x)
    if math.isinf(x):
        return None
    assert math.isfinite(x), x
    return x


def interval_from(estimate, se, crit_two, crit_one, alternative):
    if alternative == "two_sided":
        return [f(estimate - crit_two * se), f(estimate + crit_two * se)]
    if alternative == "greater":
        return [f(estimate - crit_one * se), None]
    return [None, f(estimate + crit_one * se)]


SCIPY_ALT = {"two_sided": "two-sided", "greater": "greater", "less": "less"}
SM_ALT = {"two_sided": "two-sided", "greater": "larger", "less": "smaller"}


def not_enough(arms, min_units=2):
    for name, n in arms:
        if n == 0:
            return {"not_enough_data": "no_units"}
        if n < min_units:
            return {"not_enough_data": "too_few_units"}
    return None


def relative(mc, sc, mt, st):
    """Relative lift and its delta-method standard error (se_* are standard errors)."""
    if mc == 0:
        return None, None
    r = mt / mc
    var = (st / mc) ** 2 + (r * sc / mc) ** 2
    return r - 1.0, math.sqrt(var)


# ---------------------------------------------------------------------------------------------
# Welch from summaries
# ---------------------------------------------------------------------------------------------
def welch_case(name, c, t, alpha=0.05, alternative="two_sided"):
    (nc, mc, vc), (nt, mt, vt) = c, t
    case = {
        "name": name,
        "control": {"n": nc, "mean": mc, "variance": vc},
        "treatment": {"n": nt, "mean": mt, "variance": vt},
        "alpha": alpha,
        "alternative": alternative,
    }
    ne = not_enough([("control", nc), ("treatment", nt)])
    if ne is None and vc == 0 and vt == 0:
        ne = {"not_enough_data": "zero_variance"}
    if ne:
        case["expected"] = ne
        return case
    res = stats.ttest_ind_from_stats(
        mt, math.sqrt(vt), nt, mc, math.sqrt(vc), nc, equal_var=False,
        alternative=SCIPY_ALT[alternative],
    )
    sec, set_ = math.sqrt(vc / nc), math.sqrt(vt / nt)
    se = math.hypot(sec, set_)
    a, b = vc / nc, vt / nt
    df = (a + b) ** 2 / (a * a / (nc - 1) + b * b / (nt - 1))
    crit2 = stats.t.isf(alpha / 2, df)
    crit1 = stats.t.isf(alpha, df)
    diff = mt - mc
    exp = {
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "degrees_of_freedom": f(df),
        "difference": f(diff),
        "standard_error": f(se),
        "interval": interval_from(diff, se, crit2, crit1, alternative),
    }
    rel, rel_se = relative(mc, sec, mt, set_)
    if rel is not None:
        exp["relative"] = {
            "estimate": f(rel),
            "standard_error": f(rel_se),
            "interval": interval_from(rel, rel_se, crit2, crit1, alternative),
        }
    else:
        exp["relative"] = None
    case["expected"] = exp
    return case


welch = [
    welch_case("basic two-sided", (1000, 10.0, 4.0), (1000, 10.3, 4.5)),
    welch_case("greater", (1000, 10.0, 4.0), (1000, 10.3, 4.5), alternative="greater"),
    welch_case("less", (1000, 10.0, 4.0), (1000, 10.3, 4.5), alternative="less"),
    welch_case("less, effect the other way", (500, 3.0, 1.0), (480, 2.8, 1.3), alternative="less"),
    welch_case("tiny n=2 each", (2, 1.0, 0.5), (2, 3.0, 2.0)),
    welch_case("tiny n=2 vs n=3, one-sided", (2, 1.0, 0.5), (3, 3.0, 2.0), alternative="greater"),
    welch_case("zero variance in control", (50, 5.0, 0.0), (60, 5.5, 2.0)),
    welch_case("zero variance in treatment", (50, 5.0, 2.0), (60, 5.5, 0.0)),
    welch_case("zero variance in both", (50, 5.0, 0.0), (60, 5.5, 0.0)),
    welch_case("one unit in control", (1, 5.0, 0.0), (60, 5.5, 2.0)),
    welch_case("no units in treatment", (10, 5.0, 1.0), (0, 0.0, 0.0)),
    welch_case("huge n 1e9", (10**9, 10.0, 4.0), (10**9, 10.0003, 4.0)),
    welch_case("huge n 1e9 null", (10**9, 10.0, 4.0), (10**9, 10.0, 4.0)),
    welch_case("huge n vs tiny n", (10**9, 10.0, 4.0), (3, 11.0, 9.0)),
    welch_case("very significant", (1000, 10.0, 1.0), (1000, 11.0, 1.0)),
    welch_case("extremely significant", (100000, 10.0, 1.0), (100000, 10.5, 1.0)),
    welch_case("zero control mean", (100, 0.0, 1.0), (100, 0.2, 1.0)),
    welch_case("negative means", (300, -5.0, 9.0), (300, -4.2, 16.0)),
    welch_case("large means small variance", (400, 1e6, 1e-4), (400, 1e6 + 1e-3, 2e-4)),
    welch_case("tiny variances", (30, 1e-9, 1e-20), (30, 2e-9, 3e-20)),
    welch_case("alpha 0.01", (200, 1.0, 1.0), (220, 1.2, 1.1), alpha=0.01),
    welch_case("alpha 0.2 greater", (200, 1.0, 1.0), (220, 1.2, 1.1), alpha=0.2, alternative="greater"),
    welch_case("identical arms", (100, 2.0, 1.0), (100, 2.0, 1.0)),
    welch_case("very unequal variances", (40, 1.0, 0.01), (40, 1.0, 100.0)),
    welch_case("revenue-like skewed", (5000, 2.31, 950.0), (5100, 2.55, 1100.0)),
]
for i in range(30):
    nc, nt = (int(x) for x in rng.integers(2, 5000, size=2))
    mc = float(rng.normal(10, 5))
    mt = mc + float(rng.normal(0, 1))
    vc, vt = (float(x) for x in rng.gamma(2.0, 3.0, size=2))
    alt = ["two_sided", "greater", "less"][i % 3]
    alpha = [0.05, 0.01, 0.1][i % 3]
    welch.append(welch_case(f"random {i}", (nc, mc, vc), (nt, mt, vt), alpha, alt))


# ---------------------------------------------------------------------------------------------
# Welch from raw samples (checks the SufficientStats path and scipy's own interval)
# ---------------------------------------------------------------------------------------------
def welch_raw_case(name, c, t, alpha=0.05, alternative="two_sided"):
    c = [float(x) for x in c]
    t = [float(x) for x in t]
    res = stats.ttest_ind(t, c, equal_var=False, alternative=SCIPY_ALT[alternative])
    ci = res.confidence_interval(1 - alpha)
    return {
        "name": name,
        "control": c,
        "treatment": t,
        "alpha": alpha,
        "alternative": alternative,
        "expected": {
            "statistic": f(res.statistic),
            "p_value": f(res.pvalue),
            "degrees_of_freedom": f(res.df),
            "difference": f(np.mean(t) - np.mean(c)),
            "interval": [f(ci.low), f(ci.high)],
        },
    }


welch_raw = [
    welch_raw_case("small", [1, 2, 3.5], [2, 5, 7, 9]),
    welch_raw_case("zero variance control", [4, 4, 4, 4], [3, 5, 4.5, 6, 5]),
    welch_raw_case("one-sided greater", [1, 2, 3.5, 2.2], [2, 5, 7, 9], alternative="greater"),
    welch_raw_case("one-sided less", [1, 2, 3.5, 2.2], [2, 5, 7, 9], 0.1, "less"),
]
for i in range(6):
    c = rng.normal(100, 15, size=int(rng.integers(5, 60))).round(3)
    t = rng.normal(103, 18, size=int(rng.integers(5, 60))).round(3)
    welch_raw.append(welch_raw_case(f"random {i}", c, t, [0.05, 0.01][i % 2], ["two_sided", "greater", "less"][i % 3]))
welch_raw.append(welch_raw_case("conversions 0/1", [0, 1, 0, 0, 1, 0, 0, 0, 1, 0], [1, 1, 0, 1, 0, 1, 1, 0, 1, 1]))


# ---------------------------------------------------------------------------------------------
# Proportions (unpooled Wald z-test)
# ---------------------------------------------------------------------------------------------
def proportion_case(name, c, t, alpha=0.05, alternative="two_sided"):
    (xc, nc), (xt, nt) = c, t
    case = {
        "name": name,
        "control": {"conversions": xc, "n": nc},
        "treatment": {"conversions": xt, "n": nt},
        "alpha": alpha,
        "alternative": alternative,
    }
    ne = not_enough([("control", nc), ("treatment", nt)])
    pc = xc / nc if nc else 0.0
    pt = xt / nt if nt else 0.0
    sec = math.sqrt(pc * (1 - pc) / nc) if nc else 0.0
    set_ = math.sqrt(pt * (1 - pt) / nt) if nt else 0.0
    if ne is None and sec == 0 and set_ == 0:
        ne = {"not_enough_data": "zero_variance"}
    if ne:
        case["expected"] = ne
        return case
    res = test_proportions_2indep(
        xt, nt, xc, nc, method="wald", compare="diff", alternative=SM_ALT[alternative],
        correction=False, return_results=True,
    )
    se = math.sqrt(res.variance)
    crit2, crit1 = stats.norm.isf(alpha / 2), stats.norm.isf(alpha)
    if alternative == "two_sided":
        lo, hi = confint_proportions_2indep(xt, nt, xc, nc, method="wald", compare="diff", alpha=alpha)
        interval = [f(lo), f(hi)]
    else:
        interval = interval_from(res.diff, se, crit2, crit1, alternative)
    exp = {
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "difference": f(res.diff),
        "standard_error": f(se),
        "interval": interval,
    }
    rel, rel_se = relative(pc, sec, pt, set_)
    exp["relative"] = None if rel is None else {
        "estimate": f(rel),
        "standard_error": f(rel_se),
        "interval": interval_from(rel, rel_se, crit2, crit1, alternative),
    }
    case["expected"] = exp
    return case


proportions = [
    proportion_case("basic", (300, 10000), (345, 10000)),
    proportion_case("greater", (300, 10000), (345, 10000), alternative="greater"),
    proportion_case("less", (300, 10000), (345, 10000), 0.1, "less"),
    proportion_case("near 0", (1, 1000000), (9, 1000000)),
    proportion_case("near 1", (999990, 1000000), (999999, 1000000)),
    proportion_case("zero conversions in control", (0, 500), (7, 500)),
    proportion_case("all converted in treatment", (480, 500), (500, 500)),
    proportion_case("zero conversions in both", (0, 500), (0, 520)),
    proportion_case("everyone converts in both", (500, 500), (520, 520)),
    proportion_case("huge n 1e9", (100000000, 1000000000), (100030000, 1000000000)),
    proportion_case("tiny n", (1, 2), (2, 3)),
    proportion_case("one unit", (1, 1), (2, 3)),
    proportion_case("unbalanced", (40, 1000), (9000, 100000)),
]
for i in range(10):
    nc, nt = (int(x) for x in rng.integers(20, 200000, size=2))
    p = float(rng.uniform(0.01, 0.6))
    xc = int(rng.binomial(nc, p))
    xt = int(rng.binomial(nt, p * float(rng.uniform(0.9, 1.15))))
    proportions.append(proportion_case(f"random {i}", (xc, nc), (xt, nt), [0.05, 0.01][i % 2], ["two_sided", "greater", "less"][i % 3]))


# ---------------------------------------------------------------------------------------------
# Ratio metrics (delta method, z-test)
# ---------------------------------------------------------------------------------------------
def ratio_estimate(y, d):
    y, d = np.asarray(y, float), np.asarray(d, float)
    n = len(y)
    r = y.sum() / d.sum()
    cov = np.cov(y, d, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * d.mean() ** 2)
    return r, math.sqrt(max(var, 0.0))


def ratio_case(name, c, t, alpha=0.05, alternative="two_sided"):
    case = {
        "name": name,
        "control": {"numerators": [float(x) for x in c[0]], "denominators": [float(x) for x in c[1]]},
        "treatment": {"numerators": [float(x) for x in t[0]], "denominators": [float(x) for x in t[1]]},
        "alpha": alpha,
        "alternative": alternative,
    }
    ne = not_enough([("control", len(c[0])), ("treatment", len(t[0]))])
    if ne is None and (sum(c[1]) == 0 or sum(t[1]) == 0):
        ne = {"not_enough_data": "zero_denominator"}
    if ne:
        case["expected"] = ne
        return case
    rc, sec = ratio_estimate(*c)
    rt, set_ = ratio_estimate(*t)
    se = math.hypot(sec, set_)
    if se == 0:
        case["expected"] = {"not_enough_data": "zero_variance"}
        return case
    z = (rt - rc) / se
    p = {"two_sided": 2 * stats.norm.sf(abs(z)), "greater": stats.norm.sf(z), "less": stats.norm.cdf(z)}[alternative]
    crit2, crit1 = stats.norm.isf(alpha / 2), stats.norm.isf(alpha)
    rel, rel_se = relative(rc, sec, rt, set_)
    case["expected"] = {
        "control_ratio": f(rc),
        "control_standard_error": f(sec),
        "treatment_ratio": f(rt),
        "treatment_standard_error": f(set_),
        "statistic": f(z),
        "p_value": f(p),
        "difference": f(rt - rc),
        "standard_error": f(se),
        "interval": interval_from(rt - rc, se, crit2, crit1, alternative),
        "relative": None if rel is None else {
            "estimate": f(rel),
            "standard_error": f(rel_se),
            "interval": interval_from(rel, rel_se, crit2, crit1, alternative),
        },
    }
    return case


def sessions_revenue(n, rate, spend):
    sessions = rng.poisson(3, size=n) + 1
    revenue = np.array([float(rng.gamma(2.0, spend / 2.0, size=s).sum()) * (rng.random() < rate) for s in sessions])
    return revenue.round(2), sessions


ratios = [
    ratio_case("hand-made", ([1, 0, 3, 2, 5], [2, 1, 3, 2, 4]), ([2, 1, 4, 2, 6, 3], [2, 2, 3, 1, 4, 3])),
    ratio_case("one-sided", ([1, 0, 3, 2, 5], [2, 1, 3, 2, 4]), ([2, 1, 4, 2, 6, 3], [2, 2, 3, 1, 4, 3]), 0.05, "greater"),
    ratio_case("zero denominator", ([0, 0, 0], [0, 0, 0]), ([1, 2], [1, 1])),
    ratio_case("one unit", ([1], [2]), ([1, 2], [1, 1])),
    ratio_case("constant ratio zero variance", ([2, 4, 6], [1, 2, 3]), ([2, 4], [1, 2])),
]
for i in range(5):
    ratios.append(ratio_case(f"revenue per session {i}", sessions_revenue(int(rng.integers(20, 80)), 0.3, 20.0),
                             sessions_revenue(int(rng.integers(20, 80)), 0.33, 21.0),
                             0.05, ["two_sided", "greater", "less"][i % 3]))


# ---------------------------------------------------------------------------------------------
# CUPED
# ---------------------------------------------------------------------------------------------
def cuped_case(name, arms, alpha=0.05, alternative="two_sided"):
    """arms: list of (y, x); arm 0 is control, arm 1 treatment; theta is fitted on all arms."""
    arms = [(np.asarray(y, float), np.asarray(x, float)) for y, x in arms]
    ss_x = sum(((x - x.mean()) ** 2).sum() for _, x in arms)
    sp = sum(((y - y.mean()) * (x - x.mean())).sum() for y, x in arms)
    theta = sp / ss_x if ss_x > 0 else 0.0
    x_all = np.concatenate([x for _, x in arms]).mean()
    adj = [y - theta * (x - x_all) for y, x in arms]
    res = stats.ttest_ind(adj[1], adj[0], equal_var=False, alternative=SCIPY_ALT[alternative])
    ci = res.confidence_interval(1 - alpha)
    raw_var = arms[0][0].var(ddof=1) / len(arms[0][0]) + arms[1][0].var(ddof=1) / len(arms[1][0])
    adj_var = adj[0].var(ddof=1) / len(adj[0]) + adj[1].var(ddof=1) / len(adj[1])
    return {
        "name": name,
        "arms": [{"values": [float(v) for v in y], "covariates": [float(v) for v in x]} for y, x in arms],
        "alpha": alpha,
        "alternative": alternative,
        "expected": {
            "theta": f(theta),
            "covariate_mean": f(x_all),
            "control_mean": f(adj[0].mean()),
            "treatment_mean": f(adj[1].mean()),
            "statistic": f(res.statistic),
            "p_value": f(res.pvalue),
            "degrees_of_freedom": f(res.df),
            "interval": [f(ci.low), f(ci.high)],
            "variance_reduction": f(1 - adj_var / raw_var),
        },
    }


cuped = []
for i, (n, rho_xy, arms) in enumerate([(40, 0.8, 2), (100, 0.5, 2), (60, 0.95, 3), (25, 0.0, 2)]):
    data = []
    for k in range(arms):
        x = rng.normal(50, 10, size=n + 3 * k)
        y = 20 + rho_xy * (x - 50) + rng.normal(0, 10 * math.sqrt(1 - rho_xy ** 2), size=len(x)) + 2.0 * k
        data.append((y.round(4), x.round(4)))
    cuped.append(cuped_case(f"correlated {rho_xy} with {arms} arms", data, 0.05, ["two_sided", "greater", "less", "two_sided"][i]))
cuped.append(cuped_case("constant covariate (theta 0)", [([1, 2, 3, 4], [5, 5, 5, 5]), ([2, 3, 5, 4, 6], [5, 5, 5, 5, 5])]))


# ---------------------------------------------------------------------------------------------
# Confidence sequences (Waudby-Smith et al. 2023), closed form
# ---------------------------------------------------------------------------------------------
def sequential_case(name, c, t, alpha, target_units):
    (nc, mc, vc), (nt, mt, vt) = c, t
    case = {
        "name": name,
        "control": {"n": nc, "mean": mc, "variance": vc},
        "treatment": {"n": nt, "mean": mt, "variance": vt},
        "alpha": alpha,
        "target_units": target_units,
    }
    sec, set_ = math.sqrt(vc / nc), math.sqrt(vt / nt)
    se = math.hypot(sec, set_)
    N = nc + nt
    l = -2 * math.log(alpha)
    rho2 = (l + math.log(1 + l)) / target_units
    margin = math.sqrt(2 * (N * rho2 + 1) / (N * N * rho2) * math.log(math.sqrt(N * rho2 + 1) / alpha))
    sigma = math.sqrt(N) * se
    diff = mt - mc
    S = N * diff / sigma
    p = min(1.0, math.sqrt(N * rho2 + 1) * math.exp(-rho2 * S * S / (2 * (N * rho2 + 1))))
    rel, rel_se = relative(mc, sec, mt, set_)
    case["expected"] = {
        "rho": f(math.sqrt(rho2)),
        "interval": [f(diff - sigma * margin), f(diff + sigma * margin)],
        "p_value": f(p),
        "relative_interval": None if rel is None else [f(rel - math.sqrt(N) * rel_se * margin), f(rel + math.sqrt(N) * rel_se * margin)],
    }
    return case


sequential = [
    sequential_case("basic", (1000, 10.0, 4.0), (1000, 10.3, 4.5), 0.05, 2000),
    sequential_case("before target", (100, 10.0, 4.0), (110, 10.3, 4.5), 0.05, 20000),
    sequential_case("after target", (50000, 10.0, 4.0), (50000, 10.05, 4.5), 0.05, 10000),
    sequential_case("strong effect", (5000, 1.0, 1.0), (5000, 1.3, 1.0), 0.05, 10000),
    sequential_case("alpha 0.01", (800, 0.1, 0.09), (800, 0.12, 0.1), 0.01, 5000),
    sequential_case("tiny n", (2, 1.0, 0.5), (2, 2.5, 0.7), 0.1, 1000),
    sequential_case("huge n", (10**9, 10.0, 4.0), (10**9, 10.0003, 4.0), 0.05, 10**9),
    sequential_case("zero control mean", (300, 0.0, 1.0), (300, 0.1, 1.0), 0.05, 1000),
]


# ---------------------------------------------------------------------------------------------
# Bayesian normal-normal model, closed form (cross-checked by quadrature)
# ---------------------------------------------------------------------------------------------
def risk_quad(mu, sd, sign):
    """E[max(0, sign*delta)] for delta ~ N(mu, sd^2) by numerical integration."""
    g = lambda x: max(0.0, sign * x) * stats.norm.pdf(x, mu, sd)
    lo, hi = mu - 40 * sd, mu + 40 * sd
    points = [0.0] if lo < 0 < hi else None
    return integrate.quad(g, lo, hi, points=points, epsabs=0, epsrel=1e-12, limit=400)[0]


def bayes_case(name, c, t, prior, scale, alpha):
    (nc, mc, vc), (nt, mt, vt) = c, t
    case = {
        "name": name,
        "control": {"n": nc, "mean": mc, "variance": vc},
        "treatment": {"n": nt, "mean": mt, "variance": vt},
        "prior": prior,
        "scale": scale,
        "alpha": alpha,
    }
    sec, set_ = math.sqrt(vc / nc), math.sqrt(vt / nt)
    if scale == "absolute":
        est, se = mt - mc, math.hypot(sec, set_)
    else:
        est, se = relative(mc, sec, mt, set_)
        if est is None:
            case["expected"] = {"not_enough_data": "zero_control_mean"}
            return case
    if prior is None:
        mu, var = est, se * se
    else:
        var = 1 / (1 / se ** 2 + 1 / prior["variance"])
        mu = var * (est / se ** 2 + prior["mean"] / prior["variance"])
    sd = math.sqrt(var)
    h = lambda a: stats.norm.pdf(a) + a * stats.norm.cdf(a)
    risk_t, risk_c = sd * h(-mu / sd), sd * h(mu / sd)
    for closed, sign in [(risk_t, -1), (risk_c, 1)]:
        q = risk_quad(mu, sd, sign)
        assert abs(q - closed) <= 1e-8 * abs(closed) + 1e-300, (name, q, closed)
    z = stats.norm.isf(alpha / 2)
    case["expected"] = {
        "posterior_mean": f(mu),
        "posterior_standard_deviation": f(sd),
        "chance_to_beat_control": f(stats.norm.cdf(mu / sd)),
        "risk_treatment": f(risk_t),
        "risk_control": f(risk_c),
        "credible_interval": [f(mu - z * sd), f(mu + z * sd)],
    }
    return case


bayes = [
    bayes_case("flat relative", (1000, 10.0, 4.0), (1000, 10.3, 4.5), None, "relative", 0.05),
    bayes_case("flat absolute", (1000, 10.0, 4.0), (1000, 10.3, 4.5), None, "absolute", 0.05),
    bayes_case("weak prior relative", (1000, 10.0, 4.0), (1000, 10.3, 4.5), {"mean": 0.0, "variance": 0.09}, "relative", 0.05),
    bayes_case("strong prior shrinks", (100, 10.0, 4.0), (100, 11.0, 4.5), {"mean": 0.0, "variance": 0.0001}, "relative", 0.1),
    bayes_case("informative absolute prior", (400, 0.2, 0.16), (400, 0.19, 0.15), {"mean": 0.01, "variance": 0.0004}, "absolute", 0.05),
    bayes_case("treatment clearly worse", (5000, 1.0, 1.0), (5000, 0.9, 1.0), None, "absolute", 0.05),
    bayes_case("treatment clearly better", (5000, 1.0, 1.0), (5000, 1.1, 1.0), None, "relative", 0.05),
    bayes_case("huge n", (10**9, 10.0, 4.0), (10**9, 10.0003, 4.0), None, "relative", 0.05),
    bayes_case("tiny n", (2, 1.0, 0.5), (2, 1.4, 0.7), None, "absolute", 0.05),
    bayes_case("zero control mean relative", (100, 0.0, 1.0), (100, 0.2, 1.0), None, "relative", 0.05),
    bayes_case("zero control mean absolute", (100, 0.0, 1.0), (100, 0.2, 1.0), None, "absolute", 0.05),
]


# ---------------------------------------------------------------------------------------------
# Sample-ratio mismatch
# ---------------------------------------------------------------------------------------------
def srm_case(name, counts, weights, threshold=0.001):
    case = {"name": name, "counts": counts, "weights": weights, "threshold": threshold}
    total = sum(counts)
    if total == 0:
        case["expected"] = {"not_enough_data": "no_units_total"}
        return case
    wsum = sum(weights)
    expected = [total * w / wsum for w in weights]
    if any(e == 0 and o > 0 for o, e in zip(counts, expected)):
        case["expected"] = {"statistic": None, "p_value": 0.0, "degrees_of_freedom": sum(1 for e in expected if e > 0) - 1,
                            "expected": [f(e) for e in expected], "mismatch": True}
        return case
    keep = [(o, e) for o, e in zip(counts, expected) if e > 0]
    res = stats.chisquare([o for o, _ in keep], [e for _, e in keep])
    case["expected"] = {
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "degrees_of_freedom": len(keep) - 1,
        "expected": [f(e) for e in expected],
        "mismatch": bool(res.pvalue < threshold),
    }
    return case


srm = [
    srm_case("balanced", [5012, 4988], [0.5, 0.5]),
    srm_case("mismatch 50.8/49.2 at 1e6", [508000, 492000], [0.5, 0.5]),
    srm_case("three arms uneven weights", [2010, 1985, 4100], [1, 1, 2]),
    srm_case("weights not normalised", [330, 341, 329], [3, 3, 3]),
    srm_case("many arms", [int(x) for x in rng.poisson(1000, size=20)], [1.0] * 20),
    srm_case("exact match huge", [10**9, 10**9], [1, 1]),
    srm_case("huge mismatch", [10**9, 10**9 + 10**6], [1, 1]),
    srm_case("zero-weight arm without units", [100, 0, 104], [0.5, 0.0, 0.5]),
    srm_case("zero-weight arm with units", [100, 3, 104], [0.5, 0.0, 0.5]),
    srm_case("no units", [0, 0], [0.5, 0.5]),
    srm_case("tiny counts", [1, 0], [0.5, 0.5]),
    srm_case("90/10 rollout", [9050, 950], [0.9, 0.1], 0.01),
]


# ---------------------------------------------------------------------------------------------
# Multiple-testing corrections
# ---------------------------------------------------------------------------------------------
def correction_case(name, p):
    p = [float(x) for x in p]
    return {
        "name": name,
        "p_values": p,
        "holm": [f(x) for x in multipletests(p, method="holm")[1]],
        "benjamini_hochberg": [f(x) for x in multipletests(p, method="fdr_bh")[1]],
    }


corrections = [
    correction_case("single", [0.03]),
    correction_case("few", [0.01, 0.04, 0.03, 0.005]),
    correction_case("ties", [0.02, 0.02, 0.02, 0.5]),
    correction_case("zeros and ones", [0.0, 1.0, 0.5, 1e-300, 0.049]),
    correction_case("30 random", rng.uniform(0, 0.2, size=30)),
    correction_case("100 mixed", np.concatenate([rng.uniform(0, 1e-4, size=10), rng.uniform(0, 1, size=90)])),
    correction_case("tiny p-values", [1e-12, 3e-10, 2e-8, 0.2]),
]


# ---------------------------------------------------------------------------------------------
# Power and sample size
# ---------------------------------------------------------------------------------------------
def power_case(name, mde, variance, alpha, power, ratio):
    effect = mde["effect"] if mde["kind"] == "absolute" else abs(mde["lift"] * mde["baseline_mean"])
    d = abs(effect) / math.sqrt(variance)
    n1 = NormalIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=ratio, alternative="two-sided")
    n_sm = float(np.asarray(n1).item())
    # solve_power stops at a power within ~1e-9 of the target; polish the root of statsmodels'
    # own power function with a tight brentq and check both agree well within the tolerance.
    g = lambda n: NormalIndPower().power(d, n, alpha, ratio=ratio, alternative="two-sided") - power
    n1 = brentq(g, n_sm * 0.9, n_sm * 1.1, xtol=1e-13 * n_sm, rtol=4 * np.finfo(float).eps)
    assert abs(n1 - n_sm) <= 1e-7 * n1, (name, n_sm, n1)
    probe = max(2.0, round(n1 / 2))
    return {
        "name": name,
        "mde": mde,
        "variance_per_unit": variance,
        "alpha": alpha,
        "power": power,
        "treatment_to_control_ratio": ratio,
        "expected": {
            "control_units_exact": f(n1),
            "probe_control_units": probe,
            "probe_power": f(NormalIndPower().power(d, probe, alpha, ratio=ratio, alternative="two-sided")),
        },
    }


power = [
    power_case("classic d=0.1", {"kind": "absolute", "effect": 0.1}, 1.0, 0.05, 0.8, 1.0),
    power_case("d=0.5 power 0.9", {"kind": "absolute", "effect": 0.5}, 1.0, 0.05, 0.9, 1.0),
    power_case("few units (second tail matters)", {"kind": "absolute", "effect": 0.5}, 1.0, 0.3, 0.5, 1.0),
    power_case("relative 2% on conversion 10%", {"kind": "relative", "lift": 0.02, "baseline_mean": 0.1}, 0.09, 0.05, 0.8, 1.0),
    power_case("relative 1% on revenue", {"kind": "relative", "lift": 0.01, "baseline_mean": 2.5}, 950.0, 0.05, 0.8, 1.0),
    power_case("negative mde", {"kind": "absolute", "effect": -0.05}, 0.25, 0.01, 0.8, 1.0),
    power_case("unequal split 2:1", {"kind": "absolute", "effect": 0.1}, 1.0, 0.05, 0.8, 2.0),
    power_case("unequal split 1:4", {"kind": "absolute", "effect": 0.1}, 1.0, 0.1, 0.95, 0.25),
    power_case("tiny effect huge n", {"kind": "absolute", "effect": 0.0001}, 4.0, 0.05, 0.8, 1.0),
]


# ---------------------------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------------------------
dfs = [1, 1.5, 2, 2.5, 3, 5, 10, 30, 100, 999.5, 3000, 5000, 9999, 10000, 1e5, 1e6, 1e7, 1e9, 2e9]
xs = [0.0, 0.01, 0.1, 0.5, 1, 1.2, 1.5, 1.7, 1.8, 2, 2.2, 3, 5, 10, 30, 100]
qs = [0.4, 0.25, 0.1, 0.05, 0.025, 0.005, 5e-4, 1e-6, 1e-10]
distributions = {
    "t_sf": [[d, x, f(stats.t.sf(x, d))] for d in dfs for x in xs if stats.t.sf(x, d) > 1e-300],
    "t_isf": [[d, q, f(stats.t.isf(q, d))] for d in dfs for q in qs],
    "normal_sf": [[x, f(stats.norm.sf(x))] for x in [-8, -2, -0.5, 0, 0.3, 1.96, 5, 10, 20, 37]],
    "normal_isf": [[q, f(stats.norm.isf(q))] for q in [0.9, 0.5] + qs + [1e-100, 1e-300]],
    "chi2_sf": [[k, x, f(stats.chi2.sf(x, k))] for k in [1, 2, 3, 4, 10, 19, 99] for x in [1e-3, 0.5, 1, 3, 10, 50, 300, 1000] if stats.chi2.sf(x, k) > 1e-300],
}

doc = {
    "generated_by": "crates/proteus-stats/tests/reference/generate.py",
    "versions": {"python": ".".join(map(str, __import__("sys").version_info[:3])), "numpy": np.__version__,
                 "scipy": scipy.__version__, "statsmodels": statsmodels.__version__},
    "tolerance": {"relative": 1e-6, "absolute": 1e-12},
    "distributions": distributions,
    "welch": welch,
    "welch_raw": welch_raw,
    "proportions": proportions,
    "ratios": ratios,
    "cuped": cuped,
    "sequential": sequential,
    "bayes": bayes,
    "srm": srm,
    "corrections": corrections,
    "power": power,
}
with open(OUT, "w") as fh:
    json.dump(doc, fh, indent=1, allow_nan=False)
    fh.write("\n")
counts = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
counts.update({f"distributions.{k}": len(v) for k, v in distributions.items()})
print(f"wrote {OUT}: {counts}")

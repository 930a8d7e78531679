//! The distribution functions the tests need, accurate to about 1e-12 relative.
//!
//! `statrs` supplies the building blocks that are accurate over the whole range we use
//! (`erfc`, `erfc_inv`, `ln_gamma`, the regularised incomplete beta and gamma functions), but its
//! Student t distribution is not good enough for experiments with millions of units: its upper
//! tail loses about 1e-6 relative at 1e9 degrees of freedom and its quantile function is wrong
//! by several percent (or does not return) beyond 1e6 degrees of freedom. So the t distribution
//! is built here:
//!
//! - survival function: the regularised incomplete beta function for fewer than
//!   [`T_ASYMPTOTIC_DF_MIN`] degrees of freedom, Hill's asymptotic normalising transformation
//!   (Algorithm 395, CACM 13(10), 1970) above it, where it is accurate to about 1e-13;
//! - quantile: a bracketed Newton iteration on the logarithm of that survival function, so its
//!   accuracy is the survival function's.
//!
//! Every function here works on upper tails (`sf`, `isf`) as well as lower ones, because
//! `1 - cdf` loses all precision for the p-values of large effects.

use statrs::function::{beta, erf, gamma};
use std::f64::consts::{FRAC_1_SQRT_2, PI, SQRT_2};

/// From this many degrees of freedom on, the t distribution uses Hill's asymptotic formula;
/// below it the incomplete beta function, whose `ln_gamma` differences lose precision as the
/// degrees of freedom grow (1e-9 relative at 1e6).
pub const T_ASYMPTOTIC_DF_MIN: f64 = 1e4;

/// Standard normal cumulative distribution function Φ(x).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erf::erfc(-x * FRAC_1_SQRT_2)
}

/// Standard normal survival function 1 − Φ(x), accurate in the far upper tail.
pub fn normal_sf(x: f64) -> f64 {
    0.5 * erf::erfc(x * FRAC_1_SQRT_2)
}

/// Standard normal density φ(x).
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// Standard normal quantile Φ⁻¹(p) for p in (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    if p > 0.5 {
        normal_isf(1.0 - p)
    } else {
        -SQRT_2 * erf::erfc_inv(2.0 * p)
    }
}

/// Upper-tail standard normal quantile: the z with 1 − Φ(z) = q, accurate for tiny q.
pub fn normal_isf(q: f64) -> f64 {
    SQRT_2 * erf::erfc_inv(2.0 * q)
}

/// Survival function of Student's t with `df` degrees of freedom: P(T > x).
pub fn student_t_sf(x: f64, df: f64) -> f64 {
    if x < 0.0 {
        return 1.0 - student_t_sf(-x, df);
    }
    if x == 0.0 {
        return 0.5;
    }
    if df.is_infinite() {
        return normal_sf(x);
    }
    if df >= T_ASYMPTOTIC_DF_MIN {
        return normal_sf(hill_normal_deviate(x, df));
    }
    // P(T > x) = ½ I_{ν/(ν+x²)}(ν/2, ½). Computing ν/(ν+x²) as 1/(1 + x²/ν) keeps it exact for
    // large x, where the result is tiny and no complement is taken.
    let h = 1.0 / (1.0 + x * x / df);
    0.5 * beta::beta_reg(0.5 * df, 0.5, h)
}

/// Cumulative distribution function of Student's t: P(T ≤ x).
pub fn student_t_cdf(x: f64, df: f64) -> f64 {
    student_t_sf(-x, df)
}

/// Hill (1970), Algorithm 395: the normal deviate with the same upper tail as t = `x` with
/// `df` degrees of freedom, from the asymptotic expansion in 1/(df − ½).
fn hill_normal_deviate(x: f64, df: f64) -> f64 {
    let a = df - 0.5;
    let b = 48.0 * a * a;
    let y = a * (x * x / df).ln_1p();
    (((((-0.4 * y - 3.3) * y - 24.0) * y - 85.5) / (0.8 * y * y + 100.0 + b) + y + 3.0) / b + 1.0)
        * y.sqrt()
}

/// ln Γ(a + ½) − ln Γ(a), without the cancellation of two huge `ln_gamma` values.
fn ln_gamma_half_ratio(a: f64) -> f64 {
    if a < 20.0 {
        gamma::ln_gamma(a + 0.5) - gamma::ln_gamma(a)
    } else {
        // Asymptotic series of ln(Γ(a+½)/Γ(a)) (from Stirling's series of both terms).
        let inv = 1.0 / a;
        let inv2 = inv * inv;
        0.5 * a.ln() - inv / 8.0 + inv * inv2 / 192.0 + inv * inv2 * inv2 / 640.0
            - 17.0 * inv * inv2 * inv2 * inv2 / 14336.0
    }
}

/// Density of Student's t with `df` degrees of freedom.
pub fn student_t_pdf(x: f64, df: f64) -> f64 {
    if df.is_infinite() {
        return normal_pdf(x);
    }
    let ln_norm = ln_gamma_half_ratio(0.5 * df) - 0.5 * (df * PI).ln();
    (ln_norm - 0.5 * (df + 1.0) * (x * x / df).ln_1p()).exp()
}

/// Quantile of Student's t: the x with P(T ≤ x) = p, for p in (0, 1).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    if p > 0.5 {
        student_t_isf(1.0 - p, df)
    } else {
        -student_t_isf(p, df)
    }
}

/// Upper-tail quantile of Student's t: the x with P(T > x) = q, for q in (0, 1).
pub fn student_t_isf(q: f64, df: f64) -> f64 {
    if q > 0.5 {
        return -student_t_isf(1.0 - q, df);
    }
    if q == 0.5 {
        return 0.0;
    }
    if df.is_infinite() {
        return normal_isf(q);
    }
    if df == 1.0 {
        // Cauchy: x = cot(πq), exact.
        return 1.0 / (PI * q).tan();
    }
    if df == 2.0 {
        return (1.0 - 2.0 * q) / (2.0 * q * (1.0 - q)).sqrt();
    }
    // Start from the Cornish–Fisher expansion around the normal quantile, then solve
    // ln sf(x) = ln q by Newton's method, kept inside a bracket that halves when a step leaves it
    // (the t tails are heavy, so plain Newton can overshoot for small df).
    let z = normal_isf(q);
    let mut x = z + (z * z * z + z) / (4.0 * df);
    if !(x.is_finite() && x > 0.0) {
        x = z.max(1.0);
    }
    let ln_q = q.ln();
    let mut lo = 0.0_f64;
    let mut hi = f64::INFINITY;
    for _ in 0..200 {
        let sf = student_t_sf(x, df);
        if sf > q {
            lo = lo.max(x);
        } else {
            hi = hi.min(x);
        }
        let g = sf.ln() - ln_q;
        let slope = -student_t_pdf(x, df) / sf;
        let mut next = x - g / slope;
        if !(next.is_finite() && next > lo && next < hi) {
            next = if hi.is_finite() {
                0.5 * (lo + hi)
            } else {
                2.0 * x.max(1.0)
            };
        }
        if (next - x).abs() <= 4.0 * f64::EPSILON * x.abs() {
            return next;
        }
        x = next;
    }
    x
}

/// Survival function of the χ² distribution with `k` degrees of freedom: P(X > x).
pub fn chi_squared_sf(x: f64, k: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    gamma::gamma_ur(0.5 * k, 0.5 * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantile_inverts_sf() {
        for df in [1.0, 1.5, 2.0, 3.0, 7.5, 30.0, 1e3, 9999.0, 1e4, 1e6, 2e9] {
            for q in [0.4, 0.1, 0.025, 1e-3, 1e-8, 1e-15] {
                let x = student_t_isf(q, df);
                let back = student_t_sf(x, df);
                assert!(
                    ((back - q) / q).abs() < 1e-9,
                    "df={df} q={q} x={x} back={back}"
                );
            }
        }
    }

    #[test]
    fn t_tends_to_normal() {
        assert!((student_t_sf(1.96, f64::INFINITY) - normal_sf(1.96)).abs() < 1e-16);
        assert!((student_t_sf(1.96, 1e12) - normal_sf(1.96)).abs() < 1e-12);
    }
}

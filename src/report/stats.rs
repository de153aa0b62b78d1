//! Summary statistics over seeds and the paired comparison of two normalizers.
use serde::Serialize;

/// Median, mean, sample standard deviation (n - 1; `None` below two values), min and max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub mean: f64,
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

/// Median of the values (mean of the two middle ones for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The [`Spread`] of the values, `None` when there are none.
pub fn spread(xs: &[f64]) -> Option<Spread> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let std = (n > 1)
        .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
    Some(Spread {
        n,
        median: median(xs),
        mean,
        std,
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom: tabulated to 3 decimals up
/// to 30, the Cornish-Fisher expansion around the normal quantile above (within 1e-3).
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let (z, n) = (1.959_964_f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// The 95% t-interval of the mean of `diffs`: mean ± t975(n-1) s / sqrt(n); `None` for fewer
/// than 2 values. (The sign-flip test's own interval is unbounded for fewer than 6 pairs, since
/// its smallest p is 2 / 2^n.)
pub fn mean_ci95(diffs: &[f64]) -> Option<[f64; 2]> {
    let s = spread(diffs)?;
    let sd = s.std?;
    let half = t975(diffs.len() - 1) * sd / (diffs.len() as f64).sqrt();
    Some([s.mean - half, s.mean + half])
}

/// Two-sided sign-flip permutation test of "the paired differences are symmetric about 0":
/// the share of the 2^n sign assignments whose |mean| is at least the observed |mean|.
/// Exact for n <= 20 (every assignment); above that, 100,000 assignments drawn with `seed`.
/// With n pairs the smallest attainable p is 2 / 2^n (0.25 for 3 seeds, 0.0625 for 5).
pub fn sign_flip_p(diffs: &[f64], seed: u64) -> f64 {
    let n = diffs.len();
    if n == 0 {
        return f64::NAN;
    }
    let observed = diffs.iter().sum::<f64>().abs();
    // Sums that differ from the observed one only by rounding count as equal.
    let tol = 1e-9 * (1.0 + diffs.iter().map(|d| d.abs()).sum::<f64>());
    let at_least = |signs: u64| {
        let s: f64 = diffs
            .iter()
            .enumerate()
            .map(|(i, d)| if signs >> i & 1 == 1 { -d } else { *d })
            .sum();
        s.abs() >= observed - tol
    };
    if n <= 20 {
        let total = 1u64 << n;
        let hits = (0..total).filter(|&s| at_least(s)).count();
        hits as f64 / total as f64
    } else {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let draws = 100_000;
        let mut hits = 0usize;
        for _ in 0..draws {
            let signs: Vec<bool> = (0..n).map(|_| rng.random()).collect();
            let s: f64 = diffs
                .iter()
                .zip(&signs)
                .map(|(d, &neg)| if neg { -d } else { *d })
                .sum();
            if s.abs() >= observed - tol {
                hits += 1;
            }
        }
        // Counting the observed assignment keeps p above 0 (Phipson & Smyth 2010).
        (hits + 1) as f64 / (draws + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn t_interval_matches_reference_values() {
        use super::{mean_ci95, t975};
        // R: qt(0.975, c(4, 9, 60)) = 2.776445, 2.262157, 2.000298.
        assert!((t975(4) - 2.776).abs() < 1e-3);
        assert!((t975(9) - 2.262).abs() < 1e-3);
        assert!((t975(60) - 2.000298).abs() < 1e-3);
        // mean 2, sd 1.5811 (1..=5 shifted), n 5: 2 ± 2.776 * 1.5811 / sqrt(5).
        let ci = mean_ci95(&[0.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(
            (ci[0] - 0.0369).abs() < 1e-3 && (ci[1] - 3.9631).abs() < 1e-3,
            "{ci:?}"
        );
        assert!(mean_ci95(&[1.0]).is_none());
    }

    use super::*;

    #[test]
    fn by_hand() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        let s = spread(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.max), (4, 2.5, 1.0, 4.0));
        // sum of squared deviations 5, over n - 1 = 3
        assert!((s.std.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(spread(&[7.0]).unwrap().std, None);
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn sign_flip_by_enumeration() {
        // All three differences positive: only all-plus and all-minus reach |sum| 6 -> 2/8.
        assert_eq!(sign_flip_p(&[1.0, 2.0, 3.0], 0), 0.25);
        // |sum| of (+1, -1) is 0: every assignment reaches it.
        assert_eq!(sign_flip_p(&[1.0, -1.0], 0), 1.0);
        // (3, 1): sums 4, 2, -2, -4 -> |sum| >= 4 in 2 of 4.
        assert_eq!(sign_flip_p(&[3.0, 1.0], 0), 0.5);
        // (0.1, 0.2, 0.3) sums to 0.6 only up to rounding; (0.3 - 0.1 - 0.2) must not count.
        assert_eq!(sign_flip_p(&[0.1, 0.2, 0.3], 0), 0.25);
        // Five positive differences: 2/32.
        assert_eq!(sign_flip_p(&[1.0; 5], 0), 0.0625);
    }

    #[test]
    fn sign_flip_sampled_above_twenty() {
        let p = sign_flip_p(&[1.0; 24], 3);
        assert!(p > 0.0 && p < 1e-4, "{p}");
        let q = sign_flip_p(&[1.0, -1.0].repeat(12), 3);
        assert!(q > 0.99, "{q}");
        assert_eq!(p, sign_flip_p(&[1.0; 24], 3));
    }
}

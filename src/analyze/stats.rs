//! Statistics of a set of embeddings `[n, d]`: centring, concentration, spread, correlation,
//! isotropy. Everything is accumulated in f64 with two passes (mean, then deviations).
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// A dimension index with a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimValue {
    pub dim: usize,
    pub value: f64,
}

/// min / median / max of per-dimension values and the max/median ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub max_over_median: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Spread {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Spread {
            min: s.first().copied().unwrap_or(0.0),
            median,
            max: s.last().copied().unwrap_or(0.0),
            max_over_median: if median != 0.0 {
                s.last().copied().unwrap_or(0.0) / median
            } else {
                0.0
            },
        }
    }
}

/// The headline statistics of an embedding set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingStats {
    pub n: usize,
    pub d: usize,
    /// ||E[h]||.
    pub mean_norm: f64,
    /// E[||h||].
    pub avg_norm: f64,
    /// ||E[h]|| / E[||h||]: 0 for centred data, 1 when every vector is the same.
    pub centring_ratio: f64,
    /// Per-dimension means (signed min/median/max; the ratio is max |mean| / median |mean|).
    pub dim_mean: Spread,
    pub dim_std: Spread,
    /// Largest |mean| dimensions (signed means).
    pub top_abs_mean: Vec<DimValue>,
    /// Largest std dimensions.
    pub top_std: Vec<DimValue>,
    /// Share of the total second moment sum_j E[h_j²] held by the top 1, 5, 10 dimensions and
    /// by the top 1% (at least one) of dimensions.
    pub second_moment_top1: f64,
    pub second_moment_top5: f64,
    pub second_moment_top10: f64,
    pub second_moment_top1pct: f64,
    /// (sum of variances)² / sum of squared variances: d for equal variances, 1 when one
    /// dimension holds all.
    pub effective_dim: f64,
    /// Mean |corr(h_j, h_k)| over j != k (dimensions with zero variance excluded).
    pub mean_abs_corr: f64,
    /// Fraction of the total variance along the first 1 and 5 principal components.
    pub pc1_explained: f64,
    pub pc5_explained: f64,
    /// Isotropy of Mu & Viswanath (ICLR 2018, "All-but-the-Top"): min_c Z(c) / max_c Z(c), with
    /// Z(c) = sum_i exp(cᵀ h_i) over the eigenvectors c of HᵀH; 1 is perfectly isotropic.
    pub isotropy: f64,
    /// Mean cosine similarity over all pairs of a seeded random subset.
    pub mean_pairwise_cosine: f64,
    pub cosine_sample: usize,
}

/// The full vectors behind the statistics (for plots).
#[derive(Debug, Clone)]
pub struct Details {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Correlation matrix, row-major `d x d`.
    pub corr: Vec<f64>,
    /// Covariance eigenvalues, largest first.
    pub eigenvalues: Vec<f64>,
    /// Loadings of the first principal component (to order dimensions in heat maps).
    pub pc1: Vec<f64>,
}

fn vec64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(
        t.to_kind(Kind::Double)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .unwrap_or_default()
}

fn top_k(v: &[f64], k: usize, key: impl Fn(f64) -> f64) -> Vec<DimValue> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| key(v[b]).total_cmp(&key(v[a])).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|dim| DimValue { dim, value: v[dim] })
        .collect()
}

fn share_of_top(v: &[f64], k: usize) -> f64 {
    let total: f64 = v.iter().sum();
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    if total == 0.0 {
        0.0
    } else {
        s.iter().take(k).sum::<f64>() / total
    }
}

/// A few statistics of an embedding set that show its collapse, cheap enough to record at every
/// epoch end: how far off-centre it is, how much variance one direction holds, how correlated
/// and how uneven its dimensions are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// ||E[h]|| / E[||h||].
    pub centring_ratio: f64,
    /// Share of the variance along the first principal component.
    pub pc1_share: f64,
    /// Mean |corr| over pairs of dimensions.
    pub mean_abs_corr: f64,
    /// Largest per-dimension std over the median one.
    pub std_spread: f64,
}

impl Geometry {
    /// The geometry of `x` (`[n, d]`).
    pub fn of(x: &Tensor) -> Geometry {
        let (s, _) = compute(x, 2, 0);
        Geometry {
            centring_ratio: s.centring_ratio,
            pc1_share: s.pc1_explained,
            mean_abs_corr: s.mean_abs_corr,
            std_spread: s.dim_std.max_over_median,
        }
    }
}

/// Computes the statistics of `x` (`[n, d]`, any float dtype and device). `cosine_sample`
/// vectors (all, if fewer) drawn with `seed` enter the pairwise cosine mean.
pub fn compute(x: &Tensor, cosine_sample: usize, seed: u64) -> (EmbeddingStats, Details) {
    let x = x.to_kind(Kind::Double).to_device(Device::Cpu);
    let (n, d) = x.size2().unwrap_or((0, 0));
    let mean_t = x.mean_dim(0, false, Kind::Double);
    let xc = &x - &mean_t;
    let cov = xc.tr().matmul(&xc) / (n.max(1) as f64);
    let var = vec64(&cov.diagonal(0, 0, 1));
    let std: Vec<f64> = var.iter().map(|v| v.max(0.0).sqrt()).collect();
    let mean = vec64(&mean_t);
    let norms = vec64(&x.norm_scalaropt_dim(2, [1], false));
    let avg_norm = norms.iter().sum::<f64>() / n.max(1) as f64;
    let mean_norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
    let second: Vec<f64> = mean.iter().zip(&var).map(|(m, v)| m * m + v).collect();
    let total_var: f64 = var.iter().sum();
    let sq_var: f64 = var.iter().map(|v| v * v).sum();

    let (corr, mean_abs_corr) = correlation(&cov, &std);
    let (evals, evecs) = cov.linalg_eigh("L");
    let mut eigenvalues = vec64(&evals);
    eigenvalues.reverse();
    let pc1 = vec64(&evecs.select(1, d - 1));
    let explained = |k: usize| {
        if total_var > 0.0 {
            eigenvalues.iter().take(k).sum::<f64>() / total_var
        } else {
            0.0
        }
    };

    let isotropy = isotropy(&x);
    let (mean_pairwise_cosine, m) = mean_pairwise_cosine(&x, cosine_sample, seed);

    let top1pct = ((d as f64) / 100.0).ceil().max(1.0) as usize;
    let stats = EmbeddingStats {
        n: n as usize,
        d: d as usize,
        mean_norm,
        avg_norm,
        centring_ratio: if avg_norm > 0.0 {
            mean_norm / avg_norm
        } else {
            0.0
        },
        dim_mean: Spread {
            // Signed means straddle 0, so their ratio compares magnitudes.
            max_over_median: Spread::of(&mean.iter().map(|m| m.abs()).collect::<Vec<_>>())
                .max_over_median,
            ..Spread::of(&mean)
        },
        dim_std: Spread::of(&std),
        top_abs_mean: top_k(&mean, 5, f64::abs),
        top_std: top_k(&std, 5, |v| v),
        second_moment_top1: share_of_top(&second, 1),
        second_moment_top5: share_of_top(&second, 5),
        second_moment_top10: share_of_top(&second, 10),
        second_moment_top1pct: share_of_top(&second, top1pct),
        effective_dim: if sq_var > 0.0 {
            total_var * total_var / sq_var
        } else {
            0.0
        },
        mean_abs_corr,
        pc1_explained: explained(1),
        pc5_explained: explained(5),
        isotropy,
        mean_pairwise_cosine,
        cosine_sample: m,
    };
    (
        stats,
        Details {
            mean,
            std,
            corr,
            eigenvalues,
            pc1,
        },
    )
}

/// The correlation matrix from the covariance (zero-variance dimensions get zero
/// correlation), row-major, and the mean |correlation| over pairs of distinct live dimensions.
fn correlation(cov: &Tensor, std: &[f64]) -> (Vec<f64>, f64) {
    let d = std.len();
    let inv: Vec<f64> = std
        .iter()
        .map(|s| if *s > 0.0 { 1.0 / s } else { 0.0 })
        .collect();
    let inv_t = Tensor::from_slice(&inv);
    let corr = vec64(&(cov * inv_t.unsqueeze(1) * inv_t.unsqueeze(0)));
    let live: Vec<usize> = (0..d).filter(|&j| std[j] > 0.0).collect();
    let (mut abs_sum, mut pairs) = (0.0, 0usize);
    for &j in &live {
        for &k in &live {
            if j != k {
                abs_sum += corr[j * d + k].abs();
                pairs += 1;
            }
        }
    }
    let mean_abs = if pairs > 0 {
        abs_sum / pairs as f64
    } else {
        0.0
    };
    (corr, mean_abs)
}

/// Isotropy over the eigenvectors of XᵀX (uncentred, as Mu & Viswanath): min over max of the
/// partition function, with log-sum-exp.
fn isotropy(x: &Tensor) -> f64 {
    let (_, u) = x.tr().matmul(x).linalg_eigh("L");
    let log_z = vec64(&x.matmul(&u).logsumexp([0], false));
    let lo = log_z.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = log_z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if log_z.is_empty() {
        0.0
    } else {
        (lo - hi).exp()
    }
}

/// The mean cosine of distinct pairs over a seeded subset of at most `sample` rows, and the
/// subset's size.
fn mean_pairwise_cosine(x: &Tensor, sample: usize, seed: u64) -> (f64, usize) {
    let n = x.size()[0];
    let m = (sample as i64).min(n);
    let rows = if m < n {
        use rand::seq::index::sample;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let idx: Vec<i64> = sample(&mut rng, n as usize, m as usize)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        x.index_select(0, &Tensor::from_slice(&idx))
    } else {
        x.shallow_clone()
    };
    let unit = &rows / rows.norm_scalaropt_dim(2, [1], true).clamp_min(1e-300);
    let sims = unit.matmul(&unit.tr());
    let total = sims.sum(Kind::Double).double_value(&[]) - sims.trace().double_value(&[]);
    let mean = if m > 1 {
        total / (m * (m - 1)) as f64
    } else {
        0.0
    };
    (mean, m as usize)
}

/// A summary of one tensor of a normalizer's saved state (running mean, std, covariance, step
/// count): what a trained normalizer learned about the vectors it normalizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSummary {
    /// The tensor's name in the checkpoint (`normalizer.running_cov`).
    pub name: String,
    pub shape: Vec<i64>,
    /// Euclidean (Frobenius) norm.
    pub norm: f64,
    /// The value of a scalar (e.g. `num_batches_tracked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The entries of a vector, or the diagonal of a square matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Spread>,
    /// A square matrix's eigenvalues (taken as symmetric): trace, share of the largest,
    /// smallest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_eigen_share: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_eigen: Option<f64>,
}

/// Summarises the saved tensor `t` named `name` (any shape; vectors by their entries, square
/// matrices by diagonal and spectrum).
pub fn state_summary(name: &str, t: &Tensor) -> StateSummary {
    let t = t.to_kind(Kind::Double).to_device(Device::Cpu);
    let shape = t.size();
    let mut s = StateSummary {
        name: name.to_string(),
        shape: shape.clone(),
        norm: if t.numel() > 0 {
            t.norm().double_value(&[])
        } else {
            0.0
        },
        value: None,
        entries: None,
        trace: None,
        top_eigen_share: None,
        min_eigen: None,
    };
    match shape.as_slice() {
        [] => s.value = Some(t.double_value(&[])),
        [_] => s.entries = Some(Spread::of(&vec64(&t))),
        [a, b] if a == b && *a > 0 => {
            s.entries = Some(Spread::of(&vec64(&t.diagonal(0, 0, 1))));
            let sym = (&t + t.tr()) / 2.0;
            let ev = vec64(&sym.linalg_eigvalsh("L"));
            let trace: f64 = ev.iter().sum();
            let top = ev.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            s.trace = Some(trace);
            s.top_eigen_share = Some(if trace != 0.0 { top / trace } else { 0.0 });
            s.min_eigen = ev.iter().copied().reduce(f64::min);
        }
        _ => {}
    }
    s
}

//! Embedding statistics against data with planted structure whose answers are known exactly.
use clsnorm::analyze::compute;
use tch::{Kind, Tensor};

/// Sylvester Hadamard entry: columns 1..7 of H8 are orthogonal, zero-mean, +-1.
fn h8(i: usize, j: usize) -> f64 {
    if (i & j).count_ones().is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// dim: (mean, scale, Hadamard column). dims 0 and 2 share column 1 (correlation +1), dims 3
/// and 4 share column 3 with opposite signs (correlation -1).
const PLAN: [(f64, f64, usize); 6] = [
    (10.0, 3.0, 1),
    (0.0, 0.5, 2),
    (-1.0, 2.0, 1),
    (0.0, 1.0, 3),
    (0.0, -1.0, 3),
    (0.5, 0.25, 4),
];

fn planted() -> (Vec<Vec<f64>>, Tensor) {
    let rows: Vec<Vec<f64>> = (0..8)
        .map(|i| PLAN.iter().map(|&(m, s, c)| m + s * h8(i, c)).collect())
        .collect();
    let t = Tensor::from_slice2(&rows).to_kind(Kind::Float);
    (rows, t)
}

fn close(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() < 1e-5 * (1.0 + want.abs()),
        "{name}: {got} != {want}"
    );
}

#[test]
fn planted_structure_gives_the_known_answers() {
    let (rows, x) = planted();
    let (s, det) = compute(&x, 100, 1);
    assert_eq!((s.n, s.d), (8, 6));
    for (j, &(m, sc, _)) in PLAN.iter().enumerate() {
        close("mean", det.mean[j], m);
        close("std", det.std[j], sc.abs());
    }
    close("mean norm", s.mean_norm, 101.25f64.sqrt());
    let avg_norm = rows
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .sum::<f64>()
        / 8.0;
    close("avg norm", s.avg_norm, avg_norm);
    close("centring", s.centring_ratio, 101.25f64.sqrt() / avg_norm);
    assert_eq!(s.top_abs_mean[0].dim, 0);
    assert_eq!(s.top_abs_mean[1].dim, 2);
    assert_eq!(
        s.top_std.iter().map(|d| d.dim).take(2).collect::<Vec<_>>(),
        [0, 2]
    );
    close("std max/median", s.dim_std.max_over_median, 3.0 / 1.0);
    // Signed means sorted -1, 0, 0, 0, 0.5, 10 (median 0); |means| have median 0.25, ratio 40.
    close("mean median", s.dim_mean.median, 0.0);
    close("|mean| max/median", s.dim_mean.max_over_median, 40.0);
    // Second moments m² + s²: 109, 0.25, 5, 1, 1, 0.3125.
    let total = 116.5625;
    close("top1", s.second_moment_top1, 109.0 / total);
    close(
        "top5",
        s.second_moment_top5,
        (109.0 + 5.0 + 1.0 + 1.0 + 0.3125) / total,
    );
    close("top10", s.second_moment_top10, 1.0);
    close("top1%", s.second_moment_top1pct, 109.0 / total);
    // Variances 9, .25, 4, 1, 1, .0625.
    close(
        "effective dim",
        s.effective_dim,
        15.3125f64.powi(2) / (81.0 + 0.0625 + 16.0 + 1.0 + 1.0 + 0.00390625),
    );
    // |corr| = 1 for the pairs (0,2) and (3,4), 0 elsewhere: 4 of 30 ordered pairs.
    close("mean |corr|", s.mean_abs_corr, 4.0 / 30.0);
    close("corr(3,4)", det.corr[3 * 6 + 4], -1.0);
    // Covariance eigenvalues: 13 (block 0,2), 2 (block 3,4), .25, .0625, 0, 0.
    close("pc1", s.pc1_explained, 13.0 / 15.3125);
    close("pc5", s.pc5_explained, 1.0);
    close("largest eigenvalue", det.eigenvalues[0], 13.0);
    // Pairwise cosine by brute force.
    let cos = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|v| v * v).sum::<f64>().sqrt()
            * b.iter().map(|v| v * v).sum::<f64>().sqrt())
    };
    let mut sum = 0.0;
    for i in 0..8 {
        for j in 0..8 {
            if i != j {
                sum += cos(&rows[i], &rows[j]);
            }
        }
    }
    close("cosine", s.mean_pairwise_cosine, sum / 56.0);
    assert!(
        s.isotropy < 1e-3,
        "a large common mean is far from isotropic: {}",
        s.isotropy
    );
}

#[test]
fn isotropy_of_a_symmetric_cross() {
    // {±a e1, ±b e2}: XᵀX = diag(2a², 2b²), so the directions are e1 and e2 and
    // Z(e1) = e^a + e^-a + 2, Z(e2) = e^b + e^-b + 2.
    let (a, b) = (1.0f64, 2.0f64);
    let x = Tensor::from_slice2(&[[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]]);
    let (s, _) = compute(&x, 10, 1);
    let z = |v: f64| v.exp() + (-v).exp() + 2.0;
    close("isotropy", s.isotropy, z(a) / z(b));
    close("centring", s.centring_ratio, 0.0);
    close("cosine", s.mean_pairwise_cosine, -4.0 / 12.0);
}

#[test]
fn large_offsets_stay_accurate_and_subsets_are_seeded() {
    // float32 input with a mean of 1e4 and unit spread: two-pass f64 keeps the std exact.
    let (_, x) = planted();
    let shifted = &x + 1e4;
    let (_, det) = compute(&shifted, 100, 1);
    close("std with offset", det.std[1], 0.5);
    let big = Tensor::randn([500, 4], (Kind::Float, tch::Device::Cpu));
    let (a, _) = compute(&big, 50, 7);
    let (b, _) = compute(&big, 50, 7);
    let (c, _) = compute(&big, 50, 8);
    assert_eq!(a.cosine_sample, 50);
    assert_eq!(a.mean_pairwise_cosine, b.mean_pairwise_cosine);
    assert_ne!(a.mean_pairwise_cosine, c.mean_pairwise_cosine);
}

#[test]
fn pictures_of_a_384_dim_embedding_stay_small() {
    let x = Tensor::randn([200, 384], (Kind::Float, tch::Device::Cpu));
    let (_, det) = compute(&x, 50, 1);
    let dir = tempfile::tempdir().unwrap();
    clsnorm::analyze::plots::write_all(dir.path(), "hidden", &det, Some(("isobn", &det))).unwrap();
    for stem in ["std_hist", "mean_sorted", "spectrum", "corr", "corr_isobn"] {
        for ext in ["png", "svg"] {
            let p = dir.path().join(format!("hidden_{stem}.{ext}"));
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len > 1000, "{} is {len} bytes", p.display());
            // The full-resolution SVG heat map was 12.6 MB; block means keep it near 1 MB.
            assert!(len < 2_000_000, "{} is {len} bytes", p.display());
        }
    }
    let svg = std::fs::read_to_string(dir.path().join("hidden_corr.svg")).unwrap();
    assert!(svg.contains("4x4 block means"));
}

#[test]
fn state_summary_reads_scalars_vectors_and_covariances() {
    use clsnorm::analyze::state_summary;
    let s = state_summary("steps", &Tensor::from(7.0f64));
    assert_eq!((s.value, s.shape.len()), (Some(7.0), 0));
    let v = state_summary("std", &Tensor::from_slice(&[3.0f32, 1.0, 2.0, 10.0]));
    let e = v.entries.unwrap();
    assert_eq!((e.min, e.median, e.max), (1.0, 2.5, 10.0));
    assert!((v.norm - 114f64.sqrt()).abs() < 1e-6);
    // A covariance with eigenvalues 4 and 1 (rotated by 45 degrees): trace 5, top share 0.8.
    let c = Tensor::from_slice(&[2.5f64, 1.5, 1.5, 2.5]).view([2, 2]);
    let m = state_summary("cov", &c);
    assert!((m.trace.unwrap() - 5.0).abs() < 1e-12);
    assert!((m.top_eigen_share.unwrap() - 0.8).abs() < 1e-12);
    assert!((m.min_eigen.unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(m.entries.unwrap().median, 2.5);
}

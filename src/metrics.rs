//! GLUE metrics. Degenerate inputs give a defined number, never NaN: MCC and correlations with
//! a constant side are 0 (no measurable association), F1 with no true positives is 0.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A metric a task reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    /// F1 of the positive class (label index 1).
    F1,
    /// Matthews correlation coefficient (multi-class form).
    Mcc,
    /// Unweighted mean of every class's F1 (sklearn's `average="macro"`), for more than two
    /// classes.
    MacroF1,
    Pearson,
    Spearman,
    /// Mean of accuracy and F1 (MRPC/QQP model selection, as HF `run_glue`).
    AccF1,
    /// Mean of Pearson and Spearman (STS-B model selection).
    PearsonSpearman,
    /// Mean squared error (lower is better; never a primary metric): unlike the correlations it
    /// sees predictions that are shifted or scaled away from the labels.
    Mse,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
            Metric::MacroF1 => "f1_macro",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::AccF1 => "acc_and_f1",
            Metric::PearsonSpearman => "pearson_spearman",
            Metric::Mse => "mse",
        }
    }
}

/// Model outputs for a split, aligned with the gold labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Outputs {
    Classes { pred: Vec<usize>, gold: Vec<usize> },
    Scores { pred: Vec<f64>, gold: Vec<f64> },
}

/// Fraction of equal entries.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// F1 of class 1.
pub fn f1(pred: &[usize], gold: &[usize]) -> f64 {
    let (mut tp, mut fp, mut fne) = (0.0, 0.0, 0.0);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fne += 1.0,
            _ => {}
        }
    }
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fne)
    }
}

/// Macro F1: the mean over the classes seen in gold or predictions of each class's F1 (0 for
/// a class with no true positives), as sklearn's `f1_score(average="macro")` over those
/// labels.
pub fn macro_f1(pred: &[usize], gold: &[usize]) -> f64 {
    let classes: std::collections::BTreeSet<usize> = pred.iter().chain(gold).copied().collect();
    if classes.is_empty() {
        return 0.0;
    }
    let f1_of = |c: usize| {
        let (mut tp, mut fp, mut fne) = (0.0, 0.0, 0.0);
        for (&p, &g) in pred.iter().zip(gold) {
            match (p == c, g == c) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fne += 1.0,
                _ => {}
            }
        }
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fne)
        }
    };
    classes.iter().map(|&c| f1_of(c)).sum::<f64>() / classes.len() as f64
}

/// Matthews correlation, in the multi-class form of Gorodkin (2004) that sklearn uses; equal to
/// the usual binary formula for two classes.
pub fn mcc(pred: &[usize], gold: &[usize]) -> f64 {
    let k = pred.iter().chain(gold).max().map_or(0, |m| m + 1);
    let mut conf = vec![vec![0f64; k]; k];
    for (&p, &g) in pred.iter().zip(gold) {
        conf[g][p] += 1.0;
    }
    let n: f64 = pred.len() as f64;
    let t: Vec<f64> = (0..k).map(|i| conf[i].iter().sum()).collect(); // true counts
    let p: Vec<f64> = (0..k).map(|j| (0..k).map(|i| conf[i][j]).sum()).collect(); // predicted
    let c: f64 = (0..k).map(|i| conf[i][i]).sum();
    let cov_tp = c * n - t.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>();
    let cov_pp = n * n - p.iter().map(|x| x * x).sum::<f64>();
    let cov_tt = n * n - t.iter().map(|x| x * x).sum::<f64>();
    let d = (cov_pp * cov_tt).sqrt();
    if d == 0.0 {
        0.0
    } else {
        cov_tp / d
    }
}

/// Pearson correlation, accumulated in f64 around the means.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks starting at 1, ties sharing their average rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman correlation: Pearson of the (tie-averaged) ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Mean squared difference; 0 for no pairs.
pub fn mse(pred: &[f64], gold: &[f64]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter()
        .zip(gold)
        .map(|(p, g)| (p - g).powi(2))
        .sum::<f64>()
        / gold.len() as f64
}

/// Computes `metrics` on `outputs`; metrics that do not apply to the output type are skipped.
pub fn compute(metrics: &[Metric], outputs: &Outputs) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for &m in metrics {
        let v = match (m, outputs) {
            (Metric::Accuracy, Outputs::Classes { pred, gold }) => accuracy(pred, gold),
            (Metric::F1, Outputs::Classes { pred, gold }) => f1(pred, gold),
            (Metric::Mcc, Outputs::Classes { pred, gold }) => mcc(pred, gold),
            (Metric::MacroF1, Outputs::Classes { pred, gold }) => macro_f1(pred, gold),
            (Metric::AccF1, Outputs::Classes { pred, gold }) => {
                (accuracy(pred, gold) + f1(pred, gold)) / 2.0
            }
            (Metric::Pearson, Outputs::Scores { pred, gold }) => pearson(pred, gold),
            (Metric::Spearman, Outputs::Scores { pred, gold }) => spearman(pred, gold),
            (Metric::PearsonSpearman, Outputs::Scores { pred, gold }) => {
                (pearson(pred, gold) + spearman(pred, gold)) / 2.0
            }
            (Metric::Mse, Outputs::Scores { pred, gold }) => mse(pred, gold),
            _ => continue,
        };
        out.insert(m.name().to_string(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn macro_f1_by_hand() {
        // Class 0: tp 2 fp 1 fn 0 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 1/2; class 2: tp 0 -> 0
        // (sklearn's f1_score(gold, pred, average="macro") = 0.43333).
        let gold = [0, 0, 1, 1, 2];
        let pred = [0, 0, 1, 0, 1];
        close(macro_f1(&pred, &gold), (0.8 + 0.5 + 0.0) / 3.0);
        close(macro_f1(&gold, &gold), 1.0);
        close(macro_f1(&[], &[]), 0.0);
    }

    #[test]
    fn binary_counts_by_hand() {
        // tp=3 fp=1 fn=2 tn=4
        let gold = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0];
        close(accuracy(&pred, &gold), 0.7);
        close(f1(&pred, &gold), 6.0 / 9.0);
        // (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (12-2)/sqrt(4*5*5*6)
        close(mcc(&pred, &gold), 10.0 / 600f64.sqrt());
    }

    #[test]
    fn multiclass_mcc_matches_sklearn() {
        // By hand: n=7, correct c=4, true counts t=(2,2,3), predicted counts p=(3,2,2):
        // (c*n - t.p) / sqrt((n^2 - p.p)(n^2 - t.t)) = (28 - 16) / sqrt(32 * 32) = 0.375
        close(mcc(&[0, 2, 1, 0, 1, 2, 0], &[0, 1, 2, 0, 1, 2, 2]), 0.375);
    }

    #[test]
    fn degenerate_cases_are_zero_not_nan() {
        assert_eq!(mcc(&[1, 1, 1], &[0, 1, 1]), 0.0);
        assert_eq!(mcc(&[0, 0], &[0, 0]), 0.0);
        assert_eq!(f1(&[0, 0, 0], &[1, 0, 1]), 0.0);
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[0.0, 1.0, 2.0]), 0.0);
        assert_eq!(spearman(&[2.0, 2.0], &[1.0, 3.0]), 0.0);
        assert_eq!(accuracy(&[], &[]), 0.0);
        assert_eq!(mcc(&[], &[]), 0.0);
    }

    #[test]
    fn correlations_match_scipy() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [2.0, 1.0, 4.0, 3.0, 7.0, 5.0];
        // The textbook formula, written out independently.
        let dx: Vec<f64> = x.iter().map(|v| v - 3.5).collect();
        let dy: Vec<f64> = y.iter().map(|v| v - 11.0 / 3.0).collect();
        let num: f64 = dx.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let den =
            (dx.iter().map(|a| a * a).sum::<f64>() * dy.iter().map(|b| b * b).sum::<f64>()).sqrt();
        close(pearson(&x, &y), num / den);
        // Spearman with ties: ranks of [1,2,2,3] are [1,2.5,2.5,4].
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), [1.0, 2.5, 2.5, 4.0]);
        // Ranks of y are [1,2,3.5,5,3.5]: sum dxdy = 8, sxx = 10, syy = 9.5, so 8/sqrt(95).
        close(
            spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]),
            8.0 / 95f64.sqrt(),
        );
        close(spearman(&x, &x.map(|v: f64| v.powi(3))), 1.0);
    }

    #[test]
    fn compute_reports_task_metrics() {
        let o = Outputs::Classes {
            pred: vec![1, 0, 1, 1],
            gold: vec![1, 0, 0, 1],
        };
        let m = compute(
            &[Metric::Accuracy, Metric::F1, Metric::AccF1, Metric::Pearson],
            &o,
        );
        assert_eq!(m.len(), 3);
        close(m["acc_and_f1"], (0.75 + 0.8) / 2.0);
    }

    #[test]
    fn mse_sees_a_shift_that_the_correlations_do_not() {
        let gold = [1.0, 2.0, 4.0, 5.0];
        let shifted: Vec<f64> = gold.iter().map(|g| g - 2.5).collect();
        let o = Outputs::Scores {
            pred: shifted,
            gold: gold.to_vec(),
        };
        let m = compute(&[Metric::PearsonSpearman, Metric::Mse], &o);
        close(m["pearson_spearman"], 1.0);
        close(m["mse"], 6.25);
        // (0.5^2 + 1^2 + 0 + 2^2) / 4
        close(mse(&[1.5, 3.0, 4.0, 3.0], &gold), 5.25 / 4.0);
        assert_eq!(mse(&[], &[]), 0.0);
    }
}

//! Every normalizer against an independent computation of its formula, its train/eval
//! semantics, gradients by finite differences, odd shapes, and state round trips.
mod common;

use clsnorm::encoder::weights;
use clsnorm::normalize::{
    BatchNormOptions, CenterOptions, IsoBn, IsoBnOptions, L2Options, LayerNormOptions, NormConfig,
    Normalizer, Normalizers, StandardizeOptions, WhitenOptions,
};
use tch::{nn, Device, Kind, Tensor};

/// Every normalizer `--norm` accepts.
const ALL: &[&str] = &[
    "none",
    "center",
    "standardize",
    "batchnorm",
    "layernorm",
    "isobn",
    "whiten",
    "l2",
];

fn build(cfg: &NormConfig, hidden: i64, kind: Kind) -> (nn::VarStore, Box<dyn Normalizer>) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let n = Normalizers::builtin()
        .build(cfg, &(vs.root() / "normalizer"), hidden)
        .unwrap();
    if kind == Kind::Double {
        vs.double();
    }
    (vs, n)
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(t.to_kind(Kind::Double)).unwrap()
}

/// Anisotropic data with planted structure: a large mean, uneven scales, correlated dims.
fn planted(n: i64, d: i64, seed: i64, kind: Kind) -> Tensor {
    tch::manual_seed(seed);
    let z = Tensor::randn([n, d], (kind, Device::Cpu));
    let scales = Tensor::linspace(0.2, 3.0, d, (kind, Device::Cpu));
    let mix =
        Tensor::eye(d, (kind, Device::Cpu)) + Tensor::randn([d, d], (kind, Device::Cpu)) * 0.3;
    (z * scales).matmul(&mix) + 2.0
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// IsoBN written out with plain loops from shared/docs/paper.md.
struct RefIsoBn {
    c: Vec<Vec<f64>>,
    s: Vec<f64>,
    t: i32,
    m: f64,
    eps: f64,
    beta: f64,
    bias_correction: bool,
}

impl RefIsoBn {
    fn new(d: usize, m: f64, eps: f64, beta: f64, bias_correction: bool) -> Self {
        RefIsoBn {
            c: vec![vec![0.0; d]; d],
            s: vec![0.0; d],
            t: 0,
            m,
            eps,
            beta,
            bias_correction,
        }
    }
    fn update(&mut self, x: &[Vec<f64>]) {
        let (n, d) = (x.len() as f64, self.s.len());
        let mean: Vec<f64> = (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        for j in 0..d {
            for k in 0..d {
                let cb = x
                    .iter()
                    .map(|r| (r[j] - mean[j]) * (r[k] - mean[k]))
                    .sum::<f64>()
                    / n;
                self.c[j][k] += self.m * (cb - self.c[j][k]);
            }
            let sb = (x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt();
            self.s[j] += self.m * (sb - self.s[j]);
        }
        self.t += 1;
    }
    fn scale(&self) -> Vec<f64> {
        let d = self.s.len();
        let k = if self.bias_correction {
            1.0 - (1.0 - self.m).powi(self.t)
        } else {
            1.0
        };
        let c = |j: usize, l: usize| self.c[j][l] / k;
        let s = |j: usize| self.s[j] / k;
        let mut a: Vec<f64> = (0..d)
            .map(|j| {
                let gamma = (0..d)
                    .map(|l| (c(j, l) / (s(j) * s(l))).clamp(-1.0, 1.0).powi(2))
                    .sum::<f64>()
                    / d as f64;
                (gamma * s(j) + self.eps).powf(-self.beta)
            })
            .collect();
        let trace: f64 = (0..d).map(|j| c(j, j)).sum();
        let weighted: f64 = (0..d).map(|j| c(j, j) * a[j] * a[j]).sum();
        let f = (trace / (weighted + self.eps)).sqrt();
        a.iter_mut().for_each(|v| *v *= f);
        a
    }
}

#[test]
fn isobn_matches_the_paper_step_for_step() {
    let _g = common::torch_rng_lock();
    for bias_correction in [false, true] {
        let cfg = NormConfig::of(&IsoBnOptions {
            momentum: 0.05,
            eps: 1e-3,
            beta: 0.5,
            bias_correction,
        });
        let (_vs, iso) = build(&cfg, 6, Kind::Double);
        let mut r = RefIsoBn::new(6, 0.05, 1e-3, 0.5, bias_correction);
        // Before any training step: identity, no NaN.
        let x0 = planted(5, 6, 1, Kind::Double);
        assert!(iso.forward(&x0, false).equal(&x0));
        for step in 0..4 {
            let x = planted(8, 6, 10 + step, Kind::Double);
            let out = iso.forward(&x, true);
            r.update(&rows(&x));
            let a = r.scale();
            let want: Vec<Vec<f64>> = rows(&x)
                .iter()
                .map(|row| row.iter().zip(&a).map(|(v, s)| v * s).collect())
                .collect();
            assert!(
                max_diff(&rows(&out), &want) < 1e-9,
                "step {step} (bias correction {bias_correction})"
            );
        }
        // Eval uses the stored state without changing it.
        let x = planted(3, 6, 99, Kind::Double);
        let e1 = iso.forward(&x, false);
        assert!(e1.equal(&iso.forward(&x, false)));
        let a = r.scale();
        let want: Vec<Vec<f64>> = rows(&x)
            .iter()
            .map(|row| row.iter().zip(&a).map(|(v, s)| v * s).collect())
            .collect();
        assert!(max_diff(&rows(&e1), &want) < 1e-9);
    }
}

#[test]
fn isobn_scale_for_a_known_covariance() {
    // Two perfectly correlated dims and one independent dim, all with std 1 once the EMA has
    // converged (momentum 1 keeps exactly the last batch): rho = [[1,1,0],[1,1,0],[0,0,1]],
    // gamma = (2/3, 2/3, 1/3), a = (gamma + eps)^-1/2, then rescaled to keep tr C = 3.
    let cfg = NormConfig::of(&IsoBnOptions {
        momentum: 1.0,
        eps: 0.0 + 1e-12,
        beta: 0.5,
        bias_correction: false,
    });
    let (vs, iso) = build(&cfg, 3, Kind::Double);
    let x = Tensor::from_slice(&[
        1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0,
    ])
    .view([4, 3]);
    let _ = iso.forward(&x, true);
    let a = rows(&vs.variables()["normalizer.running_std"].unsqueeze(0))[0].clone();
    assert!(a.iter().all(|s| (s - 1.0).abs() < 1e-12), "std {a:?}");
    let raw = [
        (2.0f64 / 3.0).powf(-0.5),
        (2.0f64 / 3.0).powf(-0.5),
        (1.0f64 / 3.0).powf(-0.5),
    ];
    let f = (3.0 / raw.iter().map(|v| v * v).sum::<f64>()).sqrt();
    let got = rows(&iso.forward(&Tensor::eye(3, (Kind::Double, Device::Cpu)), false));
    for j in 0..3 {
        assert!(
            (got[j][j] - raw[j] * f).abs() < 1e-9,
            "dim {j}: {} vs {}",
            got[j][j],
            raw[j] * f
        );
    }
    assert!(
        got[2][2] > got[0][0],
        "the independent dimension is shrunk least"
    );
}

#[test]
fn formulas_of_the_simple_normalizers() {
    let _g = common::torch_rng_lock();
    let x = planted(64, 8, 3, Kind::Double);
    let col_mean = |t: &Tensor| t.mean_dim(0, false, Kind::Double);
    let col_var = |t: &Tensor| t.var_dim(0, false, false);
    // layernorm: every row mean 0, std 1.
    let (_vs, ln) = build(
        &NormConfig::of(&LayerNormOptions {
            eps: 1e-12,
            affine: false,
        }),
        8,
        Kind::Double,
    );
    let y = ln.forward(&x, true);
    assert!(
        y.mean_dim(1, false, Kind::Double)
            .abs()
            .max()
            .double_value(&[])
            < 1e-9
    );
    assert!(
        (y.var_dim(1, false, false) - 1.0)
            .abs()
            .max()
            .double_value(&[])
            < 1e-9
    );
    // batchnorm (train): every column mean 0, biased var 1; running stats per PyTorch.
    let (vs, bn) = build(
        &NormConfig::of(&BatchNormOptions {
            momentum: 0.1,
            eps: 1e-12,
            affine: true,
        }),
        8,
        Kind::Double,
    );
    let y = bn.forward(&x, true);
    assert!(col_mean(&y).abs().max().double_value(&[]) < 1e-9);
    assert!((col_var(&y) - 1.0).abs().max().double_value(&[]) < 1e-8);
    let v = vs.variables();
    let want_mean = col_mean(&x) * 0.1;
    assert!(
        (&v["normalizer.running_mean"] - want_mean)
            .abs()
            .max()
            .double_value(&[])
            < 1e-9
    );
    let want_var = x.var_dim(0, true, false) * 0.1 + 0.9;
    assert!(
        (&v["normalizer.running_var"] - want_var)
            .abs()
            .max()
            .double_value(&[])
            < 1e-9
    );
    assert!(v.contains_key("normalizer.weight") && v.contains_key("normalizer.bias"));
    // center: columns mean 0 in training.
    let (_vs, c) = build(
        &NormConfig::of(&CenterOptions { momentum: 0.1 }),
        8,
        Kind::Double,
    );
    assert!(col_mean(&c.forward(&x, true)).abs().max().double_value(&[]) < 1e-9);
    // standardize: fitted on x, x itself comes out with mean 0 and variance 1.
    let (_vs, st) = build(
        &NormConfig::of(&StandardizeOptions { eps: 1e-12 }),
        8,
        Kind::Double,
    );
    assert!(st.needs_fit());
    st.fit(&x).unwrap();
    let y = st.forward(&x, true);
    assert!(col_mean(&y).abs().max().double_value(&[]) < 1e-9);
    assert!((col_var(&y) - 1.0).abs().max().double_value(&[]) < 1e-8);
    // l2: every row has norm = scale.
    let (_vs, l2) = build(
        &NormConfig::of(&L2Options {
            scale: Some(3.0),
            fixed: true,
        }),
        8,
        Kind::Double,
    );
    let norms = l2.forward(&x, true).norm_scalaropt_dim(2, [1], false);
    assert!((norms - 3.0).abs().max().double_value(&[]) < 1e-9);
}

#[test]
fn whitened_output_has_identity_covariance() {
    let _g = common::torch_rng_lock();
    let x = planted(256, 6, 4, Kind::Double);
    // Momentum 1: the (bias-corrected) running statistics are exactly this batch's.
    let (_vs, w) = build(
        &NormConfig::of(&WhitenOptions {
            momentum: 1.0,
            eps: 1e-10,
            grad_through_stats: false,
        }),
        6,
        Kind::Double,
    );
    assert!(
        w.forward(&x, false).equal(&x),
        "identity before statistics exist"
    );
    let _ = w.forward(&x, true);
    let y = w.forward(&x, false);
    let yc = &y - y.mean_dim(0, true, Kind::Double);
    let cov = yc.tr().matmul(&yc) / 256.0;
    let err = (cov - Tensor::eye(6, (Kind::Double, Device::Cpu)))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-6, "covariance off identity by {err}");
}

#[test]
fn running_statistics_change_in_training_only() {
    let _g = common::torch_rng_lock();
    for name in ALL {
        let cfg = Normalizers::builtin().defaults(name).unwrap();
        let (vs, n) = build(&cfg, 8, Kind::Float);
        let snapshot = || {
            weights::named_variables(&vs)
                .into_iter()
                .map(|(k, t)| (k, t.copy()))
                .collect::<Vec<_>>()
        };
        let x = planted(16, 8, 5, Kind::Float);
        let before = snapshot();
        let _ = n.forward(&x, false);
        for ((k, a), (_, b)) in before.iter().zip(snapshot()) {
            assert!(a.equal(&b), "{name}: eval changed {k}");
        }
        let _ = n.forward(&x, true);
        let changed = before
            .iter()
            .zip(snapshot())
            .any(|((_, a), (_, b))| !a.equal(&b));
        let stateful = matches!(*name, "center" | "batchnorm" | "isobn" | "whiten");
        assert_eq!(
            changed,
            stateful,
            "{name}: training {} its statistics",
            if changed { "changed" } else { "did not change" }
        );
    }
}

fn fd_check(name: &str, n: &dyn Normalizer, x: &Tensor, train: bool) {
    let w = Tensor::randn(x.size(), (Kind::Double, Device::Cpu));
    let loss = |x: &Tensor| (n.forward(x, train) * &w).sum(Kind::Double);
    let xv = x.copy().set_requires_grad(true);
    loss(&xv).backward();
    let grad = rows(&xv.grad());
    let h = 1e-6;
    let base = rows(x);
    for i in 0..base.len() {
        for j in 0..base[0].len() {
            let bump = |delta: f64| {
                let mut b = base.clone();
                b[i][j] += delta;
                let t = Tensor::from_slice2(&b);
                tch::no_grad(|| loss(&t).double_value(&[]))
            };
            let num = (bump(h) - bump(-h)) / (2.0 * h);
            assert!(
                (num - grad[i][j]).abs() < 1e-5 * (1.0 + num.abs()),
                "{name} (train={train}) d/dx[{i}][{j}]: analytic {} numeric {num}",
                grad[i][j]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let _g = common::torch_rng_lock();
    let x = planted(6, 5, 7, Kind::Double);
    for name in ALL {
        let cfg = match *name {
            "batchnorm" => NormConfig::of(&BatchNormOptions {
                affine: true,
                ..Default::default()
            }),
            name => Normalizers::builtin().defaults(name).unwrap(),
        };
        let (_vs, n) = build(&cfg, 5, Kind::Double);
        if n.needs_fit() {
            n.fit(&planted(32, 5, 8, Kind::Double)).unwrap();
        }
        for _ in 0..3 {
            let _ = n.forward(&planted(6, 5, 9, Kind::Double), true);
        }
        fd_check(name, n.as_ref(), &x, false);
        // Training mode for methods whose output depends only on the batch.
        if matches!(
            *name,
            "none" | "center" | "batchnorm" | "layernorm" | "l2" | "standardize"
        ) {
            fd_check(name, n.as_ref(), &x, true);
        }
    }
    let (_vs, n) = build(
        &NormConfig::of(&WhitenOptions {
            momentum: 0.1,
            eps: 1e-3,
            grad_through_stats: true,
        }),
        5,
        Kind::Double,
    );
    fd_check("whiten (grad through statistics)", n.as_ref(), &x, true);
}

#[test]
fn isobn_and_whiten_statistics_are_detached() {
    let _g = common::torch_rng_lock();
    let x = planted(6, 5, 11, Kind::Double).set_requires_grad(true);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let iso = IsoBn::new(&(vs.root() / "normalizer"), 5, 0.05, 1e-3, 0.5, false);
    vs.double();
    let out = iso.forward(&x, true);
    let w = Tensor::randn([6, 5], (Kind::Double, Device::Cpu));
    (&out * &w).sum(Kind::Double).backward();
    // d(h * a)/dh with a detached is exactly a (per dimension).
    let want = &w * iso.scale();
    assert!((x.grad() - want).abs().max().double_value(&[]) < 1e-12);
    for (k, t) in vs.variables() {
        assert!(!t.requires_grad(), "{k} must not require grad");
    }
    let (vs, wh) = build(
        &NormConfig::of(&WhitenOptions {
            momentum: 0.1,
            eps: 1e-3,
            grad_through_stats: false,
        }),
        5,
        Kind::Double,
    );
    let x = planted(6, 5, 12, Kind::Double).set_requires_grad(true);
    let out = wh.forward(&x, true);
    (&out * &w).sum(Kind::Double).backward();
    assert!(vs
        .variables()
        .values()
        .all(|t| !t.requires_grad() && !t.grad().defined()));
}

#[test]
fn constant_dimensions_stay_finite() {
    let _g = common::torch_rng_lock();
    // A dimension with zero variance (as all-MiniLM's [CLS] nearly has) must not give NaN.
    let x = planted(32, 6, 3, Kind::Float);
    let _ = x.narrow(1, 2, 1).fill_(4.0);
    for name in ALL {
        let (_vs, n) = build(
            &Normalizers::builtin().defaults(name).unwrap(),
            6,
            Kind::Float,
        );
        if n.needs_fit() {
            n.fit(&x).unwrap();
        }
        for _ in 0..3 {
            let _ = n.forward(&x, true);
        }
        let y = n.forward(&x, false);
        assert!(
            bool::try_from(y.isfinite().all()).unwrap(),
            "{name}: non-finite output"
        );
    }
}

#[test]
fn hidden_sizes_and_batch_of_one() {
    let _g = common::torch_rng_lock();
    for hidden in [384, 768, 1024] {
        for name in ALL {
            let (_vs, n) = build(
                &Normalizers::builtin().defaults(name).unwrap(),
                hidden,
                Kind::Float,
            );
            if n.needs_fit() {
                n.fit(&planted(16, hidden, 1, Kind::Float)).unwrap();
            }
            for batch in [16, 1] {
                let x = planted(batch, hidden, 2, Kind::Float);
                for train in [true, false] {
                    let y = n.forward(&x, train);
                    assert_eq!(y.size(), [batch, hidden]);
                    assert!(
                        bool::try_from(y.isfinite().all()).unwrap(),
                        "{name} hidden {hidden} batch {batch} train {train}: non-finite"
                    );
                }
            }
        }
    }
}

#[test]
fn state_round_trips_through_safetensors() {
    let _g = common::torch_rng_lock();
    let dir = tempfile::tempdir().unwrap();
    for name in ALL {
        let cfg = Normalizers::builtin().defaults(name).unwrap();
        let (vs, n) = build(&cfg, 8, Kind::Float);
        if n.needs_fit() {
            n.fit(&planted(32, 8, 1, Kind::Float)).unwrap();
        }
        for s in 0..3 {
            let _ = n.forward(&planted(16, 8, 20 + s, Kind::Float), true);
        }
        let path = dir.path().join(format!("{name}.safetensors"));
        weights::write_safetensors(&path, &weights::named_variables(&vs)).unwrap();
        let (vs2, n2) = build(&cfg, 8, Kind::Float);
        let ck = weights::Checkpoint {
            path: path.clone(),
            tensors: weights::read_safetensors(&path).unwrap(),
        };
        weights::load_into(&vs2, &ck, &weights::Names::PLAIN).unwrap();
        let x = planted(5, 8, 30, Kind::Float);
        assert!(
            n.forward(&x, false).equal(&n2.forward(&x, false)),
            "{name}: eval differs after reload"
        );
    }
}

//! Learning-rate schedules with warmup, as `transformers`' `get_*_schedule_with_warmup`
//! compute them: update `t` (0-based) uses `lr * t / warmup` during warmup, then
//! - linear: `lr * (total - t) / (total - warmup)` (the IsoBN protocol's, the default);
//! - cosine: `lr * (1 + cos(pi * p)) / 2` with `p = (t - warmup) / (total - warmup)` (half a
//!   cycle, `num_cycles = 0.5`);
//! - constant: `lr`.

use serde::{Deserialize, Serialize};

/// Which schedule follows the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Linear,
    Cosine,
    Constant,
}

/// The learning-rate schedule of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// Learning rate of update `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let rest = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let f = match self.kind {
            ScheduleKind::Linear => self.total_steps.saturating_sub(step) as f64 / rest,
            ScheduleKind::Cosine => {
                let p = (step - self.warmup_steps) as f64 / rest;
                0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            ScheduleKind::Constant => 1.0,
        };
        self.lr * f.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: ScheduleKind, warmup: usize, total: usize) -> Vec<f64> {
        let s = Schedule {
            kind,
            lr: 1.0,
            warmup_steps: warmup,
            total_steps: total,
        };
        (0..=total).map(|t| s.lr_at(t)).collect()
    }

    #[test]
    fn warmup_then_decay() {
        let want = [
            0.0,
            0.25,
            0.5,
            0.75,
            1.0,
            5.0 / 6.0,
            4.0 / 6.0,
            0.5,
            2.0 / 6.0,
            1.0 / 6.0,
            0.0,
        ];
        for (g, w) in at(ScheduleKind::Linear, 4, 10).iter().zip(want) {
            assert!((g - w).abs() < 1e-12);
        }
        let none = Schedule {
            kind: ScheduleKind::Linear,
            lr: 2.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(none.lr_at(0), 2.0);
        assert_eq!(none.lr_at(2), 1.0);
    }

    /// transformers 4.57.1's own multipliers (`_get_cosine_schedule_with_warmup_lr_lambda` with
    /// `num_cycles=0.5`, `_get_constant_schedule_with_warmup_lr_lambda`), printed for these
    /// arguments on 2026-12-07.
    #[test]
    fn cosine_and_constant_are_transformers() {
        let cosine = [
            0.0,
            0.5,
            1.0,
            0.9504844339512095,
            0.8117449009293668,
            0.6112604669781572,
            0.38873953302184283,
            0.18825509907063326,
            0.04951556604879048,
            0.0,
        ];
        for (g, w) in at(ScheduleKind::Cosine, 2, 9).iter().zip(cosine) {
            assert!((g - w).abs() < 1e-15, "{g} {w}");
        }
        let constant = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 1.0];
        for (g, w) in at(ScheduleKind::Constant, 3, 5).iter().zip(constant) {
            assert!((g - w).abs() < 1e-15, "{g} {w}");
        }
    }
}

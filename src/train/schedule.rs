//! Linear warmup then linear decay to zero (HF `get_linear_schedule_with_warmup`): update `t`
//! (0-based) uses `lr * t / warmup` during warmup, then `lr * (total - t) / (total - warmup)`.

/// The learning-rate schedule of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// Learning rate of update `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let f = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let rest = self.total_steps.saturating_sub(self.warmup_steps).max(1);
            self.total_steps.saturating_sub(step) as f64 / rest as f64
        };
        self.lr * f.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LinearSchedule {
            lr: 1.0,
            warmup_steps: 4,
            total_steps: 10,
        };
        let got: Vec<f64> = (0..11).map(|t| s.lr_at(t)).collect();
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
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        let none = LinearSchedule {
            lr: 2.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(none.lr_at(0), 2.0);
        assert_eq!(none.lr_at(2), 1.0);
    }
}

//! Numeric precision of the encoder: fp32, or mixed precision as `torch.autocast` does it
//! (libtorch's own autocast, through the shim in `csrc/autocast.cpp`): matmuls, linear layers
//! and attention in bf16/fp16, the ops autocast keeps in fp32 in fp32, and weights, gradients
//! and optimizer state in fp32 throughout. The encoder's outputs are cast back to fp32, so the
//! normalizer (covariances, eigendecompositions, batch statistics), the head and the loss
//! always run in fp32.
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Error, Result};

/// The `--precision` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// Autocast to bfloat16 (same range as fp32: no loss scaling needed).
    Bf16,
    /// Autocast to float16, with dynamic loss scaling during training (as torch.amp.GradScaler).
    Fp16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

/// Refuses NaN or infinite values in `t` (rows are examples): no command writes them as
/// results. `what` names the values ("the model's outputs"). In fp16 they come from an
/// overflow of fp16's range (65504), which bf16 and fp32 avoid; in bf16 or fp32 from broken
/// weights or normalizer statistics.
pub fn check_finite(t: &tch::Tensor, what: &str, precision: Precision) -> Result<()> {
    let rows = if t.dim() == 0 {
        t.reshape([1, 1])
    } else {
        t.reshape([t.size()[0], -1])
    };
    let finite: Vec<bool> =
        tch::no_grad(|| Vec::try_from(rows.isfinite().all_dim(-1, false).to_device(Device::Cpu)))?;
    let bad = finite.iter().filter(|f| !**f).count();
    let Some(first) = finite.iter().position(|f| !f) else {
        return Ok(());
    };
    let cause = if precision == Precision::Fp16 {
        "fp16 overflowed: the model's activations exceed fp16's range (65504); \
         --precision bf16 (fp32's range) or fp32 avoids it"
            .to_string()
    } else {
        format!("in {precision}, this means broken weights or normalizer statistics")
    };
    Err(Error::Invalid(format!(
        "{what} are NaN or infinite for {bad} of {} examples (the first is example {}): {cause}",
        finite.len(),
        first + 1
    )))
}

extern "C" {
    fn clsnorm_autocast_enter(
        cuda: i32,
        dtype: i32,
        prev_enabled: *mut i32,
        prev_dtype: *mut i32,
    ) -> i32;
    fn clsnorm_autocast_exit(cuda: i32, prev_enabled: i32, prev_dtype: i32) -> i32;
    fn clsnorm_autocast_enabled(cuda: i32) -> i32;
    fn clsnorm_set_tf32(on: i32) -> i32;
}

impl Precision {
    /// Runs `f` (a forward pass) under autocast for `device` at this precision; fp32 runs it
    /// as it is. Autocast state is per thread, as in torch.
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        let dtype = match self {
            Precision::Fp32 => return f(),
            Precision::Bf16 => 0,
            Precision::Fp16 => 1,
        };
        let cuda = i32::from(device.is_cuda());
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain C functions of the shim; the pointers are to live locals.
        let entered =
            unsafe { clsnorm_autocast_enter(cuda, dtype, &mut prev_enabled, &mut prev_dtype) } == 0;
        if !entered {
            tracing::warn!("libtorch refused autocast; running in fp32");
            return f();
        }
        // Restores the state even if `f` panics (a libtorch error surfacing through tch).
        struct Exit(i32, i32, i32);
        impl Drop for Exit {
            fn drop(&mut self) {
                // SAFETY: as above; the shim catches every C++ exception.
                unsafe { clsnorm_autocast_exit(self.0, self.1, self.2) };
            }
        }
        let _exit = Exit(cuda, prev_enabled, prev_dtype);
        f()
    }

    /// fp16 and bf16 work on every device, but a CPU without bf16 (or fp16) instructions
    /// emulates them, slower than fp32: that gets a warning.
    pub fn warn_if_emulated(self, device: Device) {
        if device.is_cuda() {
            return;
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if self.emulated_on(&cpuinfo) {
            tracing::warn!(
                "--precision {self} on a CPU without {self} instructions: libtorch emulates \
                 them, which is slower than fp32"
            );
        }
    }

    /// Whether a CPU with these `/proc/cpuinfo` flags lacks instructions for this precision.
    fn emulated_on(self, cpuinfo: &str) -> bool {
        let has = |f: &str| cpuinfo.split_whitespace().any(|w| w == f);
        match self {
            Precision::Fp32 => false,
            Precision::Bf16 => !(has("avx512_bf16") || has("amx_bf16")),
            Precision::Fp16 => !(has("avx512_fp16") || has("amx_fp16")),
        }
    }
}

/// Whether autocast is on for `device`'s type on this thread (for tests and checks).
pub fn autocast_enabled(device: Device) -> Result<bool> {
    // SAFETY: plain C function of the shim.
    match unsafe { clsnorm_autocast_enabled(i32::from(device.is_cuda())) } {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::Invalid(
            "libtorch failed to report autocast state".into(),
        )),
    }
}

/// `--tf32`: lets CUDA run fp32 matmuls and convolutions in TF32 (10-bit mantissa inputs,
/// fp32 accumulation), as `torch.backends.cuda.matmul.allow_tf32 = True`. Off by default, as
/// in torch; no effect on the CPU.
pub fn set_tf32(on: bool) -> Result<()> {
    // SAFETY: plain C function of the shim.
    if unsafe { clsnorm_set_tf32(i32::from(on)) } != 0 {
        return Err(Error::Invalid("libtorch refused to set TF32".into()));
    }
    Ok(())
}

/// Dynamic loss scaling for fp16 training, `torch.amp.GradScaler`'s rule: the loss is
/// multiplied by `scale` before backward; if any gradient then overflows, the update is
/// skipped and the scale halved; after `GROWTH_INTERVAL` clean updates in a row it doubles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    /// Clean updates since the scale last changed.
    pub growth_tracker: u64,
    /// Updates skipped because a gradient overflowed.
    pub skipped: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: Self::INIT_SCALE,
            growth_tracker: 0,
            skipped: 0,
        }
    }
}

impl GradScaler {
    /// torch's defaults.
    pub const INIT_SCALE: f64 = 65536.0;
    pub const GROWTH_FACTOR: f64 = 2.0;
    pub const BACKOFF_FACTOR: f64 = 0.5;
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// Below this scale an overflow is not fp16's range but a diverging run: it is reported as
    /// a non-finite gradient like in fp32 instead of being skipped forever.
    pub const MIN_SCALE: f64 = 1.0;

    /// Records an update's outcome; returns whether the optimizer may step.
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if grads_finite {
            self.growth_tracker += 1;
            if self.growth_tracker == Self::GROWTH_INTERVAL {
                self.scale *= Self::GROWTH_FACTOR;
                self.growth_tracker = 0;
            }
        } else {
            self.scale *= Self::BACKOFF_FACTOR;
            self.growth_tracker = 0;
            self.skipped += 1;
        }
        grads_finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaler_backs_off_on_overflow_and_grows_after_the_interval() {
        let mut s = GradScaler::default();
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped, s.growth_tracker), (32768.0, 1, 0));
        for _ in 0..GradScaler::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
        // An overflow resets the count towards growth.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker, s.skipped), (32768.0, 0, 2));
    }

    #[test]
    fn reduced_precision_is_emulated_without_its_cpu_flags() {
        let zen4 = "flags : fpu avx2 avx512f avx512_bf16 avx512vl";
        let sapphire = "flags : avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile";
        let old = "flags : fpu sse4_2 avx2 fma";
        assert!(!Precision::Bf16.emulated_on(zen4) && Precision::Fp16.emulated_on(zen4));
        assert!(!Precision::Bf16.emulated_on(sapphire) && !Precision::Fp16.emulated_on(sapphire));
        assert!(Precision::Bf16.emulated_on(old) && Precision::Fp16.emulated_on(old));
        assert!(!Precision::Fp32.emulated_on(old));
    }

    #[test]
    fn autocast_is_scoped_and_restored() {
        let cpu = Device::Cpu;
        assert!(!autocast_enabled(cpu).unwrap());
        let inside = Precision::Bf16.autocast(cpu, || {
            let nested = Precision::Fp16.autocast(cpu, || autocast_enabled(cpu).unwrap());
            (nested, autocast_enabled(cpu).unwrap())
        });
        assert_eq!(inside, (true, true));
        assert!(!autocast_enabled(cpu).unwrap());
        assert!(!Precision::Fp32.autocast(cpu, || autocast_enabled(cpu).unwrap()));
    }

    #[test]
    fn matmuls_run_in_the_chosen_dtype_and_elementwise_ops_do_not() {
        let a = tch::Tensor::randn([4, 8], (tch::Kind::Float, Device::Cpu));
        for (p, kind) in [
            (Precision::Bf16, tch::Kind::BFloat16),
            (Precision::Fp16, tch::Kind::Half),
            (Precision::Fp32, tch::Kind::Float),
        ] {
            let (mm, add) = p.autocast(Device::Cpu, || (a.matmul(&a.tr()), &a + 1.0));
            assert_eq!((mm.kind(), add.kind()), (kind, tch::Kind::Float), "{p}");
        }
    }
}

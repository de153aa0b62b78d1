//! Real numbers from users (options, sweep files, model configs) checked where they are used:
//! in f32 arithmetic (tensors, the fused optimizer), within a range where they still do what
//! their name says. A value finite in f64 can be 0 or infinite in f32 (`eps=1e300`,
//! `scale=1e-300`), and then a run trains to nothing with exit status 0.

/// A number as a message prints it: plain in the usual range, scientific outside it.
fn show(x: f64) -> String {
    if x == 0.0 || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// `v` is finite, in `[lo, hi]`, and (unless 0) a normal f32: neither 0 nor infinite there.
pub fn f32_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    let normal = v == 0.0 || (v as f32).is_normal();
    if v.is_finite() && (lo..=hi).contains(&v) && normal {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between {} and {} (it is used in f32 arithmetic), got {}",
            show(lo),
            show(hi),
            show(v)
        ))
    }
}

/// An epsilon added to a variance or a denominator: above 0 in f32, at most 1.
pub fn epsilon(name: &str, v: f64) -> Result<(), String> {
    f32_range(name, v, 1e-30, 1.0)
}

/// A moving-average momentum: at most 1, and large enough that `1 - momentum` differs from 1
/// in f32 (below ~6e-8 the statistics never move).
pub fn momentum(name: &str, v: f64) -> Result<(), String> {
    f32_range(name, v, 1e-6, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_zero_or_infinite_in_f32_are_refused() {
        assert!(epsilon("eps", 1e-5).is_ok());
        assert!(epsilon("eps", 1e300).is_err());
        assert!(epsilon("eps", 1e-300).is_err());
        assert!(epsilon("eps", 0.0).is_err());
        assert!(momentum("momentum", 1e-300).is_err());
        assert!(momentum("momentum", 0.1).is_ok());
        let e = f32_range("scale", 1e-300, 1e-4, 1e4).unwrap_err();
        assert!(
            e.contains("between 0.0001 and 10000") && e.contains("got 1e-300"),
            "{e}"
        );
        assert!(f32_range("x", f64::NAN, 0.0, 1.0).is_err());
    }
}

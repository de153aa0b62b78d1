//! Where tensors live and how many CPU threads libtorch may use.
use std::str::FromStr;

use tch::Device;

use crate::error::{Error, Result};

/// The `--device` choice: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "invalid device {}: expected auto, cpu, cuda or cuda:N",
                crate::excerpt::quoted(s)
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// Resolves the choice against the GPUs libtorch can see.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else if count == 0 {
                    Err(Error::Invalid(format!(
                        "device cuda:{n} requested, but libtorch sees no CUDA GPU \
                         (is this the CUDA build? run scripts/setup.sh --cuda)"
                    )))
                } else {
                    Err(Error::Invalid(format!(
                        "device cuda:{n} requested, but only {count} CUDA GPU(s) are visible"
                    )))
                }
            }
        }
    }
}

/// Sets libtorch's intra-op thread count; `None` means all cores.
pub fn set_threads(threads: Option<usize>) -> Result<usize> {
    let n = match threads {
        Some(0) => return Err(Error::Invalid("--threads must be at least 1".into())),
        Some(n) if n > crate::train::limits::MAX_THREADS => {
            return Err(Error::Invalid(format!(
                "--threads must be at most {}, got {n}",
                crate::train::limits::MAX_THREADS
            )))
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    tch::set_num_threads(n as i32);
    Ok(n)
}

extern "C" {
    fn clsnorm_cpu_cache_install() -> i32;
    fn clsnorm_cpu_cache_stats(
        maps: *mut u64,
        reuses: *mut u64,
        unmaps: *mut u64,
        peak_live: *mut u64,
        peak_mapped: *mut u64,
    ) -> i32;
}

/// Makes clsnorm's caching allocator (`csrc/cpu_cache.cpp`) libtorch's CPU allocator for
/// tensors of 64 KiB and more: each its own mapping, kept for the next tensor of its size, and
/// the kept ones released when the mapped total would pass the largest total ever in use. The
/// resident set then follows what libtorch holds at its peak, whatever the history of shapes,
/// and repeating shapes fault no pages. Blocks start at different 64-byte offsets into their
/// first page, so that element-wise loops over several large tensors do not find all their
/// operands in one cache set. Returns whether it is installed.
pub fn install_cpu_cache() -> bool {
    // SAFETY: a plain C function of the shim that catches every C++ exception.
    unsafe { clsnorm_cpu_cache_install() == 0 }
}

/// What the caching allocator did: fresh mappings, reuses, releases, and the largest bytes in
/// use and mapped at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuCacheStats {
    pub maps: u64,
    pub reuses: u64,
    pub unmaps: u64,
    pub peak_live: u64,
    pub peak_mapped: u64,
}

/// The caching allocator's counters, if it is installed.
pub fn cpu_cache_stats() -> Option<CpuCacheStats> {
    let mut s = CpuCacheStats::default();
    // SAFETY: as above; the pointers are to fields of a live local.
    let rc = unsafe {
        clsnorm_cpu_cache_stats(
            &mut s.maps,
            &mut s.reuses,
            &mut s.unmaps,
            &mut s.peak_live,
            &mut s.peak_mapped,
        )
    };
    (rc == 0).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_choices() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(
                e.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {e}"
            );
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cuda_beyond_visible_gpus_is_an_error() {
        let n = tch::Cuda::device_count() as usize;
        let e = DeviceChoice::Cuda(n).resolve().unwrap_err().to_string();
        assert!(e.contains(&format!("cuda:{n}")), "{e}");
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
    }

    #[test]
    fn zero_threads_is_rejected() {
        assert!(set_threads(Some(0)).is_err());
    }
}

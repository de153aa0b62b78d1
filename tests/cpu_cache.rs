//! The caching CPU allocator (`csrc/cpu_cache.cpp`): tensors keep their values, repeating
//! shapes reuse blocks instead of mapping new ones, and the mapped total never passes the
//! largest total in use by more than an eighth, whatever the history of shapes, and blocks
//! start at different offsets into their first page. One test per
//! process: the counters are the process's.
use clsnorm::device::{cpu_cache_stats, install_cpu_cache, CpuCacheStats};
use tch::{Kind, Tensor};

fn stats() -> CpuCacheStats {
    cpu_cache_stats().expect("installed")
}

#[test]
fn blocks_are_reused_and_the_mapped_total_follows_the_peak_in_use() {
    assert!(install_cpu_cache());
    assert!(install_cpu_cache(), "installing twice is harmless");
    // A training-like loop: the same shapes every round, several alive at once.
    let round = |r: usize| {
        let ts: Vec<Tensor> = (1..=8i64)
            .map(|k| {
                let v = (r * 10) as f64 + k as f64;
                Tensor::full([k * 50_000], v, (Kind::Float, tch::Device::Cpu))
            })
            .collect();
        for (k, t) in ts.iter().enumerate() {
            let v = (r * 10 + k + 1) as f64;
            let n = (k as i64 + 1) * 50_000;
            assert_eq!(t.size(), [n]);
            assert_eq!((t.double_value(&[0]), t.double_value(&[n - 1])), (v, v));
        }
    };
    round(0);
    // Large tensors do not all start on a page boundary: element i of operands that did sat in
    // the same L1 set, and AdamW's loop over four of them ran 3x slower in most processes.
    let live: Vec<Tensor> = (1..=8i64)
        .map(|k| Tensor::zeros([k * 50_000], (Kind::Float, tch::Device::Cpu)))
        .collect();
    let offsets: std::collections::BTreeSet<usize> =
        live.iter().map(|t| t.data_ptr() as usize % 4096).collect();
    assert!(
        offsets.iter().all(|o| o % 64 == 0),
        "libtorch's 64-byte alignment is kept: {offsets:?}"
    );
    assert!(
        offsets.len() >= 6,
        "eight tensors alive at once start at {offsets:?} into their pages"
    );
    drop(live);
    let first = stats();
    for r in 1..5 {
        round(r);
    }
    let later = stats();
    assert_eq!(
        later.maps, first.maps,
        "no new mapping for shapes seen before"
    );
    assert_eq!(later.reuses, first.reuses + 4 * 8, "{first:?} -> {later:?}");
    // An inference-like stream: shapes that grow and start again, never quite repeating.
    for pass in 0..20i64 {
        let mut kept = Vec::new();
        for k in 1..=30i64 {
            let t = Tensor::ones([k * 17_000 + pass * 300], (Kind::Float, tch::Device::Cpu));
            kept.push(t * 2.0);
            if kept.len() > 3 {
                drop(kept.remove(0));
            }
        }
    }
    // A matmul large enough for MKL's own scratch (raw_allocate/raw_deallocate).
    let a = Tensor::ones([512, 512], (Kind::Float, tch::Device::Cpu));
    assert_eq!(
        a.matmul(&a).sum(Kind::Double).double_value(&[]),
        512.0f64.powi(3)
    );
    let s = stats();
    assert!(
        s.unmaps > 0,
        "blocks that no longer fit were released: {s:?}"
    );
    assert!(
        s.peak_mapped * 8 <= s.peak_live * 9,
        "mapped {} against {} in use at most",
        s.peak_mapped,
        s.peak_live
    );
}

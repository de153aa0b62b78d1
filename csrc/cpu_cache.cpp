// A caching CPU allocator for libtorch's large tensors. glibc serves them from its heap once
// its dynamic mmap threshold has risen (up to 32 MiB): blocks freed below the heap's top stay
// resident, so batches of changing shapes (unpadded training, inference over a long file) grow
// the resident set with the input; and every fresh mapping is paid again in page faults.
// Here a tensor of at least kMinBytes gets a block of its own mapping, rounded to one of eight
// size classes per doubling; a freed block is kept for the next tensor of that size (or up to a
// quarter smaller), and the blocks kept are released, smallest first, as soon as the mapped
// total would exceed the largest total ever in use (plus an eighth). So the resident set
// follows what libtorch holds at its peak, not the history of shapes, and a loop of repeating
// shapes faults no page after its first round.
// A block's data starts at one of 64 offsets (multiples of 64 bytes) into its first page, the
// next one for each new block: when every operand began on a page boundary, element i of each
// fell in the same L1 set, and AdamW's loop over four of them (weights, gradient, moments) ran
// 3x slower in most processes on AMD EPYCs (docs/performance.md, "2026-12-07 (evening)").
// Smaller tensors go to libtorch's default allocator, which glibc's bins serve well. Every
// entry point catches C++ exceptions: none may unwind into Rust.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinBytes = size_t(1) << 16;
constexpr size_t kPage = 4096;
// Data offsets into a block's first page: kColours multiples of kAlign (libtorch's alignment).
constexpr size_t kAlign = 64;
constexpr size_t kColours = kPage / kAlign;

// Rounds up to a page, then to one of eight classes per power of two (at most 1/8 wasted).
size_t size_class(size_t n) {
  size_t b = (n + kPage - 1) & ~(kPage - 1);
  size_t top = size_t(1) << (63 - __builtin_clzll(b));
  size_t step = top / 8 > kPage ? top / 8 : kPage;
  return (b + step - 1) / step * step;
}

// A mapping of `size` bytes at `base`, whose tensor data starts `offset` bytes in.
struct Block {
  void* base;
  size_t size;
  size_t offset;
};

struct Stats {
  uint64_t maps = 0, reuses = 0, unmaps = 0;
  size_t live = 0, cached = 0, peak_live = 0, peak_mapped = 0;
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) {
      return fallback_->allocate(n);
    }
    void* p = take(size_class(n + kPage - kAlign));
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_allocate/raw_deallocate (oneDNN's and MKL's scratch) go through here: small blocks
  // came from the fallback, and go back to it.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  Stats stats() {
    std::lock_guard<std::mutex> g(mu_);
    return stats_;
  }

  static void release(void* p);

 private:
  // The data pointer of a block of `want` mapped bytes: a kept one of that size (or up to a
  // quarter larger) with its offset, or a new mapping at the next offset.
  void* take(size_t want) {
    std::vector<Block> victims;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = free_.lower_bound(want);
      if (it != free_.end() && it->first <= want + want / 4) {
        Block b = it->second;
        free_.erase(it);
        stats_.cached -= b.size;
        stats_.reuses++;
        return note_live(b);
      }
      // A new block: first let go of kept blocks that would lift the mapped total past the
      // largest total in use, the smallest first: shapes grow within a pass (batches sorted by
      // length, longer sequences), so the larger kept blocks are the ones the next sizes fit.
      size_t peak = std::max(stats_.peak_live, stats_.live + want);
      size_t limit = peak + peak / 8;
      while (!free_.empty() && stats_.live + want + stats_.cached > limit) {
        auto smallest = free_.begin();
        victims.push_back(smallest->second);
        stats_.cached -= smallest->first;
        stats_.unmaps++;
        free_.erase(smallest);
      }
    }
    for (auto& v : victims) {
      munmap(v.base, v.size);
    }
    void* base = mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      C10_THROW_ERROR(OutOfMemoryError,
                      "clsnorm's CPU allocator could not map " + std::to_string(want) + " bytes");
    }
    std::lock_guard<std::mutex> g(mu_);
    // Consecutive blocks 37 colours apart (coprime with 64: all 64 before one repeats).
    size_t offset = (stats_.maps * 37 % kColours) * kAlign;
    stats_.maps++;
    return note_live(Block{base, want, offset});
  }

  void* note_live(Block b) {
    void* data = static_cast<char*>(b.base) + b.offset;
    live_[data] = b;
    stats_.live += b.size;
    stats_.peak_live = std::max(stats_.peak_live, stats_.live);
    stats_.peak_mapped = std::max(stats_.peak_mapped, stats_.live + stats_.cached);
    return data;
  }

  void give_back(void* p) {
    std::unique_lock<std::mutex> g(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) {
      g.unlock();
      // A small block of the fallback, freed through raw_deallocate.
      if (auto del = fallback_->raw_deleter()) {
        del(p);
      }
      return;
    }
    Block b = it->second;
    live_.erase(it);
    stats_.live -= b.size;
    free_.emplace(b.size, b);
    stats_.cached += b.size;
  }

  c10::Allocator* fallback_;
  std::mutex mu_;
  std::unordered_map<void*, Block> live_;  // by data pointer
  std::multimap<size_t, Block> free_;      // by mapped size
  Stats stats_;
};

// Installed once and never destroyed: tensors may outlive every other static.
CachingCpuAllocator* g_cache = nullptr;

void CachingCpuAllocator::release(void* p) {
  if (g_cache != nullptr) {
    g_cache->give_back(p);
  }
}

}  // namespace

extern "C" {

// Makes the caching allocator libtorch's CPU allocator (tensors allocated before keep their
// own deleters). Idempotent. Returns 0 on success.
int clsnorm_cpu_cache_install() {
  try {
    if (g_cache == nullptr) {
      g_cache = new CachingCpuAllocator(c10::GetDefaultCPUAllocator());
      c10::SetCPUAllocator(g_cache, /*priority=*/1);
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

// Counters since installation; returns 1 when the allocator is not installed.
int clsnorm_cpu_cache_stats(uint64_t* maps, uint64_t* reuses, uint64_t* unmaps,
                            uint64_t* peak_live, uint64_t* peak_mapped) {
  if (g_cache == nullptr) {
    return 1;
  }
  try {
    Stats s = g_cache->stats();
    *maps = s.maps;
    *reuses = s.reuses;
    *unmaps = s.unmaps;
    *peak_live = s.peak_live;
    *peak_mapped = s.peak_mapped;
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"

// The few libtorch switches that tch 0.26 does not expose: autocast for a given device type
// and dtype (tch's `autocast` is CUDA-only and fixed to fp16), and TF32 for CUDA matmuls.
// Every function catches C++ exceptions: none may unwind into Rust. Return 0 on success.
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>

namespace {
c10::DeviceType device_of(int cuda) { return cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }
}  // namespace

extern "C" {

// dtype: 0 = bfloat16, 1 = float16. Saves the previous state in *prev_enabled / *prev_dtype.
int clsnorm_autocast_enter(int cuda, int dtype, int* prev_enabled, int* prev_dtype) {
  try {
    auto d = device_of(cuda);
    *prev_enabled = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    *prev_dtype = at::autocast::get_autocast_dtype(d) == at::kHalf ? 1 : 0;
    at::autocast::set_autocast_dtype(d, dtype == 1 ? at::kHalf : at::kBFloat16);
    at::autocast::set_autocast_enabled(d, true);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return 1;
  }
}

// Restores what clsnorm_autocast_enter saved; the cast-weight cache is dropped when the
// outermost region closes (as torch.autocast's __exit__).
int clsnorm_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  try {
    auto d = device_of(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(d, prev_enabled != 0);
    at::autocast::set_autocast_dtype(d, prev_dtype == 1 ? at::kHalf : at::kBFloat16);
    return 0;
  } catch (...) {
    return 1;
  }
}

// 1 if autocast is on for the device type (for tests), -1 on error.
int clsnorm_autocast_enabled(int cuda) {
  try {
    return at::autocast::is_autocast_enabled(device_of(cuda)) ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// TF32 for CUDA fp32 matmuls and convolutions (torch.backends.cuda.matmul.allow_tf32).
int clsnorm_set_tf32(int on) {
  try {
    at::globalContext().setAllowTF32CuBLAS(on != 0);
    at::globalContext().setAllowTF32CuDNN(on != 0);
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // extern "C"

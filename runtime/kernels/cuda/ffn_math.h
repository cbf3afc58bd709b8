// The SwiGLU of an expert feed-forward (ops::ExpertFfn) element by element, as runtime/backend/host_ops.cpp
// computes it: gate = silu(min(gate, L))·clamp(up, −L, L), no clamp when L is 0, silu(x) = x / (1 + e^−x) in float
// (cpu::silu). The min and clamp keep std::min / std::clamp's comparisons, so a NaN passes through as on the CPU
// (fminf would drop it). The one difference on the device: expf is within 2 ulp of glibc's expf.
#pragma once

#include "runtime/kernels/cuda/device_math.h"

namespace ferry::runtime::cuda {

FERRY_HD float swiglu(float gate, float up, float limit) {
  if (limit > 0) {
    gate = limit < gate ? limit : gate;                     // std::min(gate, limit)
    up = up < -limit ? -limit : (limit < up ? limit : up);  // std::clamp(up, -limit, limit)
  }
  const float silu = div_rn(gate, add_rn(1.0f, exp_f(-gate)));
  return mul_rn(silu, up);
}

}  // namespace ferry::runtime::cuda

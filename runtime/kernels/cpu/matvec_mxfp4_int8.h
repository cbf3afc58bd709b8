// The MXFP4 kernels for Int8 activations (matvec_mxfp4_int8.cpp), called by matvec_mxfp4.cpp's dispatch.
#pragma once

#include <cstdint>

#include "runtime/kernels/cpu/matvec.h"

namespace ferry::runtime::cpu::detail {

// y[t * y_stride + r] = row r . x[t] for rows [0, rows) and n Int8 activations on `isa` (Avx2, AvxVnni or
// Avx512; the CPU must have it). Each weight row is decoded once for all n tokens, and a token's result does
// not depend on n.
void mxfp4_int8_rows(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x,
                     int64_t n, float* y, int64_t y_stride);

}  // namespace ferry::runtime::cpu::detail

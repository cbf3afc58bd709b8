// Every tensor of a V4 checkpoint the reference forward needs, dequantized to dense float64 at load, with its
// shape checked against the config. Decoding uses only the scalar decoders of planner/core/dtype_codec.h: FP8 E4M3
// × E8M0 scale of its 128×128 block, packed FP4 E2M1 × E8M0 per 32 along the row, BF16, F16, F32, I64/I32.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "planner/core/dtype.h"
#include "planner/core/model_config.h"
#include "reference_forward.h"
#include "reference_ops.h"

namespace ferry::reference {

// A dense row-major [rows, cols] matrix in the checkpoint's [out, in] orientation.
struct Matrix {
  int64_t rows = 0, cols = 0;
  Vec w;
  Vec operator*(const Vec& x) const;  // y = W x
  Vec row(int64_t r) const;
  double at(int64_t r, int64_t c) const { return w[static_cast<size_t>(r * cols + c)]; }
};

// A weight matrix [rows, cols] decoded from its stored bytes: FP8 E4M3 codes with one E8M0 scale per
// block×block tile ([ceil(rows/block), ceil(cols/block)]), packed FP4 E2M1 (dtype I8, [rows, cols/2]) with one
// E8M0 scale per `block` along the row ([rows, cols/block]), or BF16 / F16 / F32 (no scales, block unused).
// Throws ferry::Error naming `what` when the byte sizes do not match.
Matrix decode_matrix(core::DType dtype, std::span<const std::byte> codes, std::span<const std::byte> scales,
                     int64_t rows, int64_t cols, int64_t block, const std::string& what);

struct HcWeights {
  Vec fn;     // [(2 + hc)·hc, hc·d] for a block site, [hc, hc·d] for a head
  Vec base;   // [(2 + hc)·hc] or [hc]
  Vec scale;  // [3] or [1]
};

struct CompressorWeights {
  Matrix wkv, wgate;  // [coff·D, d]
  Matrix ape;         // [ratio, coff·D]
  Vec norm;           // [D]
};

struct ExpertWeights {
  Matrix w1, w2, w3;  // w1, w3: [inter, d]; w2: [d, inter]
};

struct LayerWeights {
  int64_t index = 0;  // the layer's index in compress_ratios (num_hidden_layers for the MTP layer)
  int64_t ratio = 0;
  bool hash_routed = false;
  HcWeights hc_attn, hc_ffn;
  Vec attn_norm, ffn_norm;
  Matrix wq_a, wq_b, wkv, wo_a, wo_b;
  Vec q_norm, kv_norm, attn_sink;
  CompressorWeights compressor;        // ratio > 0
  CompressorWeights index_compressor;  // ratio == 4
  Matrix index_wq_b, index_weights_proj;
  Matrix gate;
  Vec gate_bias;                 // score-routed layers
  std::vector<int64_t> tid2eid;  // hash-routed layers: [vocab, num_experts_per_tok]
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
  // The MTP layer only.
  Matrix e_proj, h_proj;
  Vec enorm, hnorm, norm;
  HcWeights hc_head;
};

struct ReferenceWeights {
  core::ModelConfig config;
  Matrix embed, head;  // [vocab, d]
  Vec norm;
  HcWeights hc_head;
  std::vector<LayerWeights> layers;  // the main layers
  std::optional<LayerWeights> mtp;   // mtp.0, when asked for and the model has one
};

// Throws ferry::Error naming the tensor when one is missing, has another shape or an unsupported dtype.
ReferenceWeights load_reference_weights(const std::filesystem::path& model_dir, bool with_mtp);

// reference_forward() on weights loaded once (for callers that run many sequences): MTP logits are computed
// when options.mtp and the weights hold the MTP layer.
ReferenceOutput reference_forward(const ReferenceWeights& weights, const std::vector<int32_t>& tokens,
                                  ReferenceOptions options);

// The main model's logits at position `row` for each alternative: the run of `options` with that decision
// (from a run with the same tokens and flips) also taken the other way. Bitwise what reference_forward gives
// with that flip added, at a fraction of the cost: the alternatives share the run up to their positions.
std::vector<std::vector<double>> reference_alternatives(const ReferenceWeights& weights,
                                                        const std::vector<int32_t>& tokens, ReferenceOptions options,
                                                        const std::vector<FragileEvent>& alternatives, int64_t row);

}  // namespace ferry::reference

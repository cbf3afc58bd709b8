#include "runtime/checkpoint/tiny_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string_view>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/core/model_config.h"
#include "planner/core/tensor_table.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/checkpoint/tiny_tokenizer.h"

namespace ferry::runtime {

namespace fs = std::filesystem;
using core::TensorFormat;
using core::TensorRole;
using core::TensorSpec;

namespace {

constexpr int kTinyVocab = 512;

// SplitMix64: tiny, fast and identical on every platform (std's distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }  // [-1, 1)

 private:
  uint64_t state_;
};

// Each tensor's stream depends only on the seed and its name, not on the order tensors are generated in.
uint64_t tensor_seed(uint64_t seed, std::string_view name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h ^ (seed * 0x9E3779B97F4A7C15ull);
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The smallest power of two s with amax / s <= limit, as the reference's pow2 (ue8m0) scales.
int pow2_exponent(float amax, float limit) {
  if (amax <= 0) return -126;
  return std::clamp(static_cast<int>(std::ceil(std::log2(amax / limit))), -126, 127);
}

// 2^e for e in [-127, 126] (the negated exponents above): exact in float, subnormal at -127, so x * pow2(e) is
// ldexp(x, e) bit for bit (one correctly rounded result of the same product) without a libm call per value.
float pow2(int e) { return std::ldexp(1.0f, e); }

// The last projection of each residual branch (attention's wo_b, every expert's w2) is drawn 10x smaller than
// the others, so that a branch adds a modest update to the residual streams, as in a trained model, instead of
// replacing them with a random vector of their own size. With full-size branches the random model is chaotic:
// a float32 rounding difference of 1e-7 grows through flipped top-k selections to logits 10-30% apart within
// 200 tokens (seeds 1-8: prompt-median relative error against the float64 reference 3e-6 .. 2.7e-3 with fp8
// KV), and a comparison with the reference then measures the chaos, not the code. At 0.1 the same seeds give
// 4e-7 .. 1e-5 (docs/forward-semantics.md, "Why the tiny model's branches are small").
constexpr float kResidualBranchScale = 0.1f;
bool is_residual_branch_output(TensorRole r) {
  return r == TensorRole::WoB || r == TensorRole::ExpertW2 || r == TensorRole::SharedW2;
}

// Values of a linear weight [out, in]: variance gain^2/in, so a layer keeps its activations' scale (gain 1).
std::vector<float> linear_values(Rng& rng, int64_t out, int64_t in, float gain = 1.0f) {
  std::vector<float> w(static_cast<size_t>(out * in));
  const float a = gain * std::sqrt(3.0f / static_cast<float>(in));
  for (auto& x : w) x = a * rng.uniform();
  return w;
}

struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<uint8_t> scales;
};

// FP8 E4M3 with one E8M0 scale per block x block tile.
Quantized quantize_fp8_blocks(const std::vector<float>& w, int64_t out, int64_t in, int64_t block) {
  const int64_t bo = (out + block - 1) / block, bi = (in + block - 1) / block;
  Quantized q{std::vector<uint8_t>(w.size()), std::vector<uint8_t>(static_cast<size_t>(bo * bi))};
  for (int64_t r = 0; r < bo; ++r)
    for (int64_t c = 0; c < bi; ++c) {
      float amax = 0;
      for (int64_t i = r * block; i < std::min(out, (r + 1) * block); ++i)
        for (int64_t j = c * block; j < std::min(in, (c + 1) * block); ++j)
          amax = std::max(amax, std::fabs(w[size_t(i * in + j)]));
      const int k = pow2_exponent(amax, core::kE4M3Max);
      q.scales[size_t(r * bi + c)] = core::e8m0_from_exponent(k);
      const float inv = pow2(-k);
      for (int64_t i = r * block; i < std::min(out, (r + 1) * block); ++i)
        for (int64_t j = c * block; j < std::min(in, (c + 1) * block); ++j)
          q.codes[size_t(i * in + j)] = core::float_to_e4m3(w[size_t(i * in + j)] * inv);
    }
  return q;
}

// FP4 E2M1 packed two per byte along the row, one E8M0 scale per `block` values.
Quantized quantize_fp4_rows(const std::vector<float>& w, int64_t out, int64_t in, int64_t block) {
  Quantized q{std::vector<uint8_t>(static_cast<size_t>(out * in / 2)),
              std::vector<uint8_t>(static_cast<size_t>(out * in / block))};
  for (int64_t i = 0; i < out; ++i)
    for (int64_t b = 0; b < in / block; ++b) {
      const float* x = &w[size_t(i * in + b * block)];
      float amax = 0;
      for (int64_t j = 0; j < block; ++j) amax = std::max(amax, std::fabs(x[j]));
      const int k = pow2_exponent(amax, core::kE2M1Max);
      q.scales[size_t(i * (in / block) + b)] = core::e8m0_from_exponent(k);
      const float inv = pow2(-k);
      for (int64_t j = 0; j < block; j += 2) {
        const uint8_t lo = core::float_to_e2m1(x[j] * inv), hi = core::float_to_e2m1(x[j + 1] * inv);
        q.codes[size_t((i * in + b * block + j) / 2)] = core::fp4_pack(lo, hi);
      }
    }
  return q;
}

std::vector<uint8_t> to_bf16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t b = core::float_to_bf16(v[i]);
    out[2 * i] = static_cast<uint8_t>(b);
    out[2 * i + 1] = static_cast<uint8_t>(b >> 8);
  }
  return out;
}

std::vector<uint8_t> to_f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());  // little-endian hosts, as safetensors
  return out;
}

bool is_norm(TensorRole r) {
  switch (r) {
    case TensorRole::QNorm:
    case TensorRole::KvNorm:
    case TensorRole::CompressorNorm:
    case TensorRole::IndexerCompressorNorm:
    case TensorRole::AttnNorm:
    case TensorRole::FfnNorm:
    case TensorRole::ENorm:
    case TensorRole::HNorm:
    case TensorRole::MtpNorm:
    case TensorRole::FinalNorm: return true;
    default: return false;
  }
}

// Small non-linear parameters: norms near 1, mixing and biases near 0, sinks and scales moderate.
std::vector<float> small_values(Rng& rng, const TensorSpec& w) {
  std::vector<float> v(static_cast<size_t>(numel(w.shape)));
  using R = TensorRole;
  const R r = w.role;
  float base = 0, spread = 0.1f;
  if (is_norm(r))
    base = 1.0f;
  else if (r == R::HcAttnFn || r == R::HcFfnFn || r == R::HcHeadFn)
    spread = 0.1f * std::sqrt(3.0f / static_cast<float>(w.shape.back()));
  else if (r == R::HcAttnScale || r == R::HcFfnScale || r == R::HcHeadScale)
    base = 1.0f;
  else if (r == R::AttnSink)
    spread = 0.5f;
  else if (r == R::Embed)
    spread = 1.0f;
  else if (r == R::GateBias)
    spread = 0.01f;
  else if (w.shape.size() == 2)
    spread = std::sqrt(3.0f / static_cast<float>(w.shape[1]));  // BF16 linears
  for (auto& x : v) x = base + spread * rng.uniform();
  return v;
}

// Hash routing: each token id picks top-k distinct experts.
std::vector<uint8_t> tid2eid_bytes(Rng& rng, int64_t vocab, int64_t topk, int64_t experts) {
  std::vector<int64_t> ids(static_cast<size_t>(vocab * topk));
  std::vector<int64_t> perm(static_cast<size_t>(experts));
  for (int64_t t = 0; t < vocab; ++t) {
    for (int64_t e = 0; e < experts; ++e) perm[size_t(e)] = e;
    for (int64_t k = 0; k < topk; ++k) {
      const int64_t j = k + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(experts - k));
      std::swap(perm[size_t(k)], perm[size_t(j)]);
      ids[size_t(t * topk + k)] = perm[size_t(k)];
    }
  }
  std::vector<uint8_t> out(ids.size() * 8);
  std::memcpy(out.data(), ids.data(), out.size());
  return out;
}

// The bytes of a weight's stored tensors (a linear's codes, then its scales), from the weight's own stream.
std::vector<std::vector<uint8_t>> weight_bytes(const core::ModelConfig& c, const TensorSpec& w, uint64_t seed) {
  Rng rng(tensor_seed(seed, w.name));
  switch (w.format) {
    case TensorFormat::Fp8Linear:
    case TensorFormat::Mxfp4Linear: {
      const int64_t out = w.shape[0], in = w.shape[1];
      const std::vector<float> v =
          linear_values(rng, out, in, is_residual_branch_output(w.role) ? kResidualBranchScale : 1.0f);
      Quantized q = w.format == TensorFormat::Mxfp4Linear ? quantize_fp4_rows(v, out, in, c.fp4_block)
                                                          : quantize_fp8_blocks(v, out, in, c.weight_block_size);
      return {std::move(q.codes), std::move(q.scales)};
    }
    case TensorFormat::HashTable: return {tid2eid_bytes(rng, w.shape[0], w.shape[1], c.n_routed_experts)};
    case TensorFormat::Bf16Matrix:
    case TensorFormat::SmallBf16: return {to_bf16_bytes(small_values(rng, w))};
    case TensorFormat::SmallF32: return {to_f32_bytes(small_values(rng, w))};
    case TensorFormat::Unexplained: break;
  }
  FERRY_THROW("make-tiny: no generator for tensor '{}'", w.name);
}

std::vector<TensorData> generate_tensors(const core::ModelConfig& c, uint64_t seed) {
  std::vector<TensorData> out;
  core::for_each_weight(c, [&](TensorSpec&& w) {
    std::vector<std::vector<uint8_t>> bytes = weight_bytes(c, w, seed);
    std::vector<core::TensorInfo> tensors = core::stored_tensors(c, w);
    for (size_t i = 0; i < tensors.size(); ++i)
      out.push_back({std::move(tensors[i].name), tensors[i].dtype, std::move(tensors[i].shape), std::move(bytes[i])});
  });
  return out;
}

}  // namespace

nlohmann::json tiny_config_json(const TinyOptions& o) {
  nlohmann::json j = core::preset_config_json("deepseek-v4-flash");
  const int64_t window = o.real_ratios ? 128 : 16, hca = o.real_ratios ? 128 : 16;
  j["hidden_size"] = 256;
  j["num_hidden_layers"] = 5;
  j["num_attention_heads"] = 4;
  j["head_dim"] = 128;  // 64 nope + 64 rope: one FP8 block of 64 per cache row, like the real 448 + 64
  j["qk_rope_head_dim"] = 64;
  j["q_lora_rank"] = 64;
  j["o_groups"] = 2;
  j["o_lora_rank"] = 64;
  j["index_n_heads"] = 4;
  j["index_head_dim"] = 128;  // Hadamard-128 as in the real model
  j["index_topk"] = 8;        // < 25 compressed entries after 100 tokens
  j["n_routed_experts"] = 16;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 128;
  j["num_hash_layers"] = 2;
  j["vocab_size"] = kTinyVocab;
  j["sliding_window"] = window;
  if (o.pro_like) {
    j["routed_scaling_factor"] = 2.5;
    j["compress_ratios"] = {hca, hca, 4, hca, 4, 0};
  } else {
    j["compress_ratios"] = {0, 4, hca, 4, hca, 0};
  }
  if (o.overrides.is_object())
    for (const auto& [key, value] : o.overrides.items()) j[key] = value;
  return j;
}

void make_tiny_model(const fs::path& dir, const TinyOptions& o) {
  FERRY_CHECK(o.shards >= 2 && o.shards <= 64, "--shards must be in [2, 64], got {}", o.shards);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) FERRY_THROW("cannot create {}: {}", dir.string(), ec.message());
  const nlohmann::json config = tiny_config_json(o);
  const core::ModelConfig c = core::config_from_json(config, "tiny");
  FERRY_CHECK(c.arch == core::Arch::DeepseekV4, "make-tiny writes DeepSeek V4 checkpoints only");
  write_sharded_checkpoint(dir, generate_tensors(c, o.seed), o.shards);
  std::ofstream(dir / "config.json", std::ios::trunc) << config.dump(2) << "\n";
  std::ofstream tok(dir / "tokenizer.json", std::ios::trunc);
  tok << make_tiny_tokenizer_json(static_cast<int>(c.vocab_size));
  if (!tok) FERRY_THROW("cannot write {}", (dir / "tokenizer.json").string());
}

}  // namespace ferry::runtime

// Picking the next token from logits: greedy (temperature 0, ties to the lowest id) or sampling with
// temperature, top-k and top-p from a seeded generator, so a run is reproducible.
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace ferry::runtime {

struct SamplerOptions {
  double temperature = 0;  // 0: greedy
  double top_p = 1;        // keep the smallest set of tokens whose probability reaches top_p
  int64_t top_k = 0;       // keep the k most likely tokens; 0: all
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions o);
  int32_t sample(std::span<const float> logits);

 private:
  SamplerOptions o_;
  std::mt19937_64 rng_;
};

int32_t argmax(std::span<const float> logits);  // lowest id among equal maxima

}  // namespace ferry::runtime

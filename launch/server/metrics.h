// The counters behind GET /metrics and their Prometheus text exposition (format 0.0.4): requests by HTTP
// status, tokens, generation speed, queue length, running requests. Other parts of ferry add their own
// samples through a MetricsSource (the hook for memory per device and the expert cache's hit rate).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ferry::launch::server {

struct MetricSample {
  std::string name;  // e.g. "ferry_device_memory_bytes"
  std::string type;  // "gauge" or "counter"
  std::string help;
  std::vector<std::pair<std::string, std::string>> labels;  // e.g. {{"device", "cuda:0"}}
  double value = 0;
};

// Called on every scrape; must be thread-safe. E.g. one sample per device of ferry_device_memory_bytes, and
// ferry_expert_cache_hit_ratio.
using MetricsSource = std::function<std::vector<MetricSample>()>;

class Metrics {
 public:
  void count_response(int status);
  // One finished generation: its tokens and the seconds it took from the first token of the prompt.
  void record_generation(int64_t prompt_tokens, int64_t completion_tokens, double seconds);

  // Everything, with `running` / `waiting` from the scheduler and the extra samples appended.
  std::string render(int64_t running, int64_t waiting, const std::vector<MetricSample>& extra) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, int64_t> responses_;  // by status
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0, generations_ = 0;
  double generation_seconds_ = 0, last_tokens_per_second_ = 0;
};

// Prometheus text for samples: one # HELP / # TYPE per name, then `name{labels} value` lines.
std::string render_prometheus(const std::vector<MetricSample>& samples);

}  // namespace ferry::launch::server

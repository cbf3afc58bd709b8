#include "launch/server/metrics.h"

#include <fmt/format.h>

#include <cmath>
#include <set>

namespace ferry::launch::server {

namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string escape_help(const std::string& v) {
  std::string out;
  for (char c : v) out += c == '\\' ? std::string("\\\\") : c == '\n' ? std::string("\\n") : std::string(1, c);
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

}  // namespace

void Metrics::count_response(int status) {
  std::lock_guard lock(mutex_);
  ++responses_[status];
}

void Metrics::record_generation(int64_t prompt_tokens, int64_t completion_tokens, double seconds) {
  std::lock_guard lock(mutex_);
  prompt_tokens_ += prompt_tokens;
  completion_tokens_ += completion_tokens;
  ++generations_;
  generation_seconds_ += seconds;
  // A generation cancelled before its first token (a client gone) says nothing about speed.
  if (seconds > 0 && completion_tokens > 0) last_tokens_per_second_ = completion_tokens / seconds;
}

std::string Metrics::render(int64_t running, int64_t waiting, const std::vector<MetricSample>& extra) const {
  std::vector<MetricSample> s;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [status, n] : responses_)
      s.push_back({"ferry_requests_total",
                   "counter",
                   "HTTP requests answered, by status code.",
                   {{"status", std::to_string(status)}},
                   static_cast<double>(n)});
    s.push_back(
        {"ferry_generations_total", "counter", "Generations finished (or cancelled).", {}, double(generations_)});
    s.push_back({"ferry_prompt_tokens_total", "counter", "Prompt tokens processed.", {}, double(prompt_tokens_)});
    s.push_back({"ferry_tokens_generated_total", "counter", "Tokens generated.", {}, double(completion_tokens_)});
    s.push_back({"ferry_generation_seconds_total",
                 "counter",
                 "Seconds spent generating, prompt included.",
                 {},
                 generation_seconds_});
    s.push_back({"ferry_tokens_per_second",
                 "gauge",
                 "Generated tokens per second of the last finished generation.",
                 {},
                 last_tokens_per_second_});
  }
  s.push_back({"ferry_requests_running", "gauge", "Requests generating now.", {}, double(running)});
  s.push_back({"ferry_queue_length", "gauge", "Requests waiting for a running slot.", {}, double(waiting)});
  s.insert(s.end(), extra.begin(), extra.end());
  return render_prometheus(s);
}

std::string render_prometheus(const std::vector<MetricSample>& samples) {
  // Prometheus wants a name's samples together, after its HELP and TYPE lines.
  std::string out;
  std::set<std::string> done;
  for (size_t i = 0; i < samples.size(); ++i) {
    const std::string& name = samples[i].name;
    if (!done.insert(name).second) continue;
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(samples[i].help), name, samples[i].type);
    for (size_t j = i; j < samples.size(); ++j) {
      if (samples[j].name != name) continue;
      out += name;
      if (!samples[j].labels.empty()) {
        out += '{';
        for (size_t k = 0; k < samples[j].labels.size(); ++k)
          out += fmt::format("{}{}=\"{}\"", k ? "," : "", samples[j].labels[k].first,
                             escape_label(samples[j].labels[k].second));
        out += '}';
      }
      out += ' ' + format_value(samples[j].value) + '\n';
    }
  }
  return out;
}

}  // namespace ferry::launch::server

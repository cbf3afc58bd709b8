#include "runtime/generate/generate.h"

#include <chrono>
#include <string>

#include "planner/core/error.h"

namespace ferry::runtime {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerateResult generate(Session& session, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                        const GenerateCallbacks& cb) {
  FERRY_CHECK(!prompt.empty(), "the prompt is empty");
  FERRY_CHECK(o.n_predict >= 0, "-n must be non-negative");
  const int64_t ctx = session.options().ctx,
                need = session.position() + static_cast<int64_t>(prompt.size()) + o.n_predict;
  FERRY_CHECK(need <= ctx, "the prompt ({} tokens) plus -n {} needs a context of {} tokens, more than --ctx {}",
              prompt.size(), o.n_predict, need, ctx);
  GenerateResult r;
  r.prompt_tokens = static_cast<int64_t>(prompt.size());
  Sampler sampler(o.sampler);
  auto stop_requested = [&] { return r.stopped = cb.stop_requested && cb.stop_requested(); };
  if (stop_requested()) return r;
  std::vector<float> rows, last;
  auto t0 = std::chrono::steady_clock::now();
  session.feed(prompt, o.keep_logits ? &rows : nullptr, &last, cb.prefill_progress);
  r.prefill_seconds = seconds_since(t0);
  if (o.keep_logits) r.logits = std::move(rows);
  if (stop_requested()) return r;
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < o.n_predict; ++i) {
    const int32_t tok = sampler.sample(last);
    r.tokens.push_back(tok);
    if (cb.on_token) cb.on_token(tok);
    const bool stop = (o.stop_at_eos && tok == session.eos_token()) || i + 1 == o.n_predict || stop_requested();
    // The last token is fed only when its logits were asked for: they complete the logits file.
    if (stop && !o.keep_logits) break;
    session.feed({&tok, 1}, nullptr, &last);
    ++r.decoded_tokens;
    if (o.keep_logits) r.logits.insert(r.logits.end(), last.begin(), last.end());
    if (stop) break;
  }
  r.decode_seconds = seconds_since(t0);
  return r;
}

}  // namespace ferry::runtime

// A test double of the serve Engine: a deterministic token stream, optionally slow, that records what the
// server asked of it (concurrency, cancellations). One "token" per emitted piece.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "launch/server/engine.h"

namespace ferry_test {

class ScriptedEngine : public ferry::launch::server::Engine {
 public:
  using GenerationRequest = ferry::launch::server::GenerationRequest;
  using EngineResult = ferry::launch::server::EngineResult;
  using FinishReason = ferry::launch::server::FinishReason;

  std::string model = "scripted-v4";
  int64_t ctx = 4096;
  std::vector<std::string> reasoning = {"Let me ", "think."};  // thinking mode only
  std::vector<std::string> content = {"Hello", ",", " wor", "ld", "!"};
  bool endless = false;                                      // repeat `content` until max_tokens
  std::optional<ferry::launch::server::ToolCall> tool_call;  // called after the content when tools are offered
  std::chrono::milliseconds token_delay{0};
  bool fail = false;  // throw after the first content token

  std::atomic<int> generations{0}, cancellations{0}, running{0}, max_running{0};
  std::atomic<int64_t> tokens_of_last_cancelled{-1};

  std::string model_id() const override { return model; }
  int64_t context_length() const override { return ctx; }

  // One token per word of every message (or of the prompt), one more per message for its role.
  std::vector<int32_t> encode_prompt(const GenerationRequest& r) const override {
    std::string text = r.prompt;
    int32_t extra = 0;
    for (const auto& m : r.messages) {
      ++extra;
      if (m["content"].is_string()) text += " " + m["content"].get<std::string>();
    }
    std::istringstream words(text);
    std::vector<int32_t> ids(extra, 0);
    for (std::string w; words >> w;) ids.push_back(static_cast<int32_t>(w.size()));
    return ids;
  }

  EngineResult generate(const GenerationRequest& r, const std::vector<int32_t>&, int64_t max_tokens,
                        const ferry::launch::server::EngineCallbacks& cb,
                        const ferry::launch::server::StopRequested& stop) override {
    ++generations;
    const int now = ++running;
    int seen = max_running.load();
    while (seen < now && !max_running.compare_exchange_weak(seen, now)) {
    }
    struct Leave {
      std::atomic<int>& running;
      ~Leave() { --running; }
    } leave{running};
    EngineResult result = run(r, max_tokens, cb, stop);
    if (result.finish == FinishReason::Cancelled) {
      tokens_of_last_cancelled = result.completion_tokens;
      ++cancellations;
    }
    return result;
  }

 private:
  EngineResult run(const GenerationRequest& r, int64_t max_tokens, const ferry::launch::server::EngineCallbacks& cb,
                   const ferry::launch::server::StopRequested& stop) {
    EngineResult result;
    // Each piece: a stop check, the token's time, then the piece, as a generation loop would.
    auto step = [&](const std::function<void()>& emit) {
      if (stop()) {
        result.finish = FinishReason::Cancelled;
        return false;
      }
      if (result.completion_tokens == max_tokens) {
        result.finish = FinishReason::Length;
        return false;
      }
      if (token_delay.count()) std::this_thread::sleep_for(token_delay);
      emit();
      ++result.completion_tokens;
      return true;
    };
    if (r.thinking)
      for (const auto& p : reasoning)
        if (!step([&] { cb.on_reasoning(p); })) return result;
    for (size_t i = 0; endless || i < content.size(); ++i) {
      if (!step([&] { cb.on_content(content[i % content.size()]); })) return result;
      if (fail) throw std::runtime_error("scripted failure");
    }
    if (tool_call && !r.tools.empty()) {
      if (!step([&] { cb.on_tool_call(*tool_call); })) return result;
      result.finish = FinishReason::ToolCalls;
      return result;
    }
    result.finish = FinishReason::Stop;
    return result;
  }
};

}  // namespace ferry_test

#include "launch/server/v4_engine.h"

#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "launch/server/answer_stream.h"
#include "planner/core/error.h"
#include "planner/kv_cache.h"
#include "runtime/generate/generate.h"
#include "runtime/model/forward.h"
#include "runtime/model/model_weights.h"
#include "runtime/text/chat.h"
#include "runtime/text/tokenizer.h"

namespace ferry::launch::server {
namespace {

// The model's name in answers and /v1/models: the directory's own name.
std::string model_name(const std::string& dir) {
  std::filesystem::path p(dir);
  if (p.filename().empty()) p = p.parent_path();  // "models/tiny/"
  const std::string name = p.filename().string();
  return name.empty() || name == "." ? "ferry" : name;
}

class V4Engine : public Engine {
 public:
  V4Engine(const std::string& dir, const V4EngineOptions& options)
      : options_(options),
        id_(model_name(dir)),
        format_(runtime::chat_format_for_model_dir(dir)),
        tokenizer_(runtime::Tokenizer::from_model_dir(dir)),
        own_weights_(options.weights ? std::nullopt : std::optional(runtime::ModelWeights::load(dir))),
        weights_(options.weights ? *options.weights : *own_weights_) {
    FERRY_CHECK(options.ctx >= 2, "--ctx must be at least 2 (a prompt and one token)");
    idle_.push_back(new_session());
  }

  std::string model_id() const override { return id_; }
  int64_t context_length() const override { return options_.ctx; }

  std::vector<int32_t> encode_prompt(const GenerationRequest& r) const override {
    std::vector<int32_t> ids;
    if (r.kind == RequestKind::Chat) {
      FERRY_CHECK(!r.thinking || format_ == runtime::ChatFormat::DeepSeekV4,
                  "thinking mode needs a DeepSeek V4 model; this one speaks {}", runtime::chat_format_name(format_));
      runtime::ChatEncodeOptions o;
      o.mode = r.thinking ? runtime::ThinkingMode::Thinking : runtime::ThinkingMode::Chat;
      ids = tokenizer_.encode(runtime::encode_chat(format_, r.messages, r.tools, o));
    } else {
      // As `ferry run --prompt`: DeepSeek's models expect a document to begin with BOS.
      ids = tokenizer_.encode(r.prompt);
      if (auto bos = tokenizer_.bos_id(); bos && (ids.empty() || ids[0] != *bos)) ids.insert(ids.begin(), *bos);
      FERRY_CHECK(!ids.empty(), "the prompt is empty and the tokenizer has no BOS token to start it");
    }
    const int64_t vocab = weights_.config().vocab_size;
    for (int32_t id : ids)
      FERRY_CHECK(id < vocab, "the prompt has token {}, beyond the model's vocabulary of {}", id, vocab);
    return ids;
  }

  EngineResult generate(const GenerationRequest& request, const std::vector<int32_t>& prompt, int64_t max_tokens,
                        const EngineCallbacks& callbacks, const StopRequested& stop_requested) override {
    Lease lease(*this);
    runtime::Session& session = *lease.session;
    session.reset();
    AnswerStream answer(tokenizer_, request, callbacks);
    const int32_t eos = session.eos_token();
    bool ended_turn = false;

    runtime::GenerateOptions go;
    go.n_predict = max_tokens;
    go.sampler = request.sampler;
    go.stop_at_eos = !options_.ignore_eos;
    runtime::GenerateCallbacks gc;
    gc.on_token = [&](int32_t token) {
      // Without ignore_eos this token ends generation; with it, it is counted but has no text.
      if (token == eos) {
        ended_turn = !options_.ignore_eos;
        return;
      }
      answer.push(token);
    };
    if (stop_requested) gc.stop_requested = stop_requested;
    const runtime::GenerateResult g = runtime::generate(session, prompt, go, gc);

    EngineResult result;
    result.completion_tokens = static_cast<int64_t>(g.tokens.size());
    result.prefill_seconds = g.prefill_seconds;
    result.decode_seconds = g.decode_seconds;
    const FinishReason finish = answer.finish(ended_turn);
    result.finish = g.stopped ? FinishReason::Cancelled : finish;
    return result;
  }

  std::vector<MetricSample> metrics() const override {
    int64_t kv = 0, workspace = 0, sessions = 0;
    {
      std::lock_guard lock(mutex_);
      std::set<const runtime::FeedBuffers*> counted;  // sessions may share their feed buffers: counted once
      for (const auto& s : sessions_) {
        kv += planner::kv_total(s->cache().bytes());
        if (counted.insert(s->feed_buffers()).second) workspace += s->workspace_bytes();
      }
      sessions = static_cast<int64_t>(sessions_.size());
    }
    const std::string name = "ferry_host_memory_bytes", help = "Host memory the model holds, by kind";
    auto bytes = [&](const char* kind, int64_t v) {
      return MetricSample{name, "gauge", help, {{"kind", kind}}, static_cast<double>(v)};
    };
    return {bytes("weights", weights_.weight_bytes()),
            bytes("kv_cache", kv),
            bytes("workspace", workspace),
            {"ferry_sessions",
             "gauge",
             "Sequences allocated (KV cache and workspace each)",
             {},
             static_cast<double>(sessions)}};
  }

 private:
  // A session for one generate() call, back to the idle ones afterwards.
  struct Lease {
    explicit Lease(V4Engine& e) : engine(e) {
      std::lock_guard lock(e.mutex_);
      if (e.idle_.empty()) e.idle_.push_back(e.new_session());
      session = e.idle_.back();
      e.idle_.pop_back();
    }
    ~Lease() {
      std::lock_guard lock(engine.mutex_);
      engine.idle_.push_back(session);
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    V4Engine& engine;
    runtime::Session* session = nullptr;
  };

  // Called with mutex_ held (or from the constructor).
  runtime::Session* new_session() {
    runtime::SessionOptions so;
    so.ctx = options_.ctx;
    if (options_.configure_session) options_.configure_session(static_cast<int>(sessions_.size()), so);
    sessions_.push_back(std::make_unique<runtime::Session>(weights_, so));
    return sessions_.back().get();
  }

  const V4EngineOptions options_;
  const std::string id_;
  const runtime::ChatFormat format_;
  const runtime::Tokenizer tokenizer_;
  const std::optional<runtime::ModelWeights> own_weights_;  // without options.weights
  const runtime::ModelWeights& weights_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<runtime::Session>> sessions_;  // every session made, for the metrics
  std::vector<runtime::Session*> idle_;
};

}  // namespace

std::unique_ptr<Engine> open_v4_engine(const std::string& model_dir, int64_t ctx) {
  V4EngineOptions options;
  options.ctx = ctx;
  return open_v4_engine(model_dir, options);
}

std::unique_ptr<Engine> open_v4_engine(const std::string& model_dir, const V4EngineOptions& options) {
  return std::make_unique<V4Engine>(model_dir, options);
}

}  // namespace ferry::launch::server

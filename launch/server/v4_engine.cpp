#include "launch/server/v4_engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "launch/server/answer_stream.h"
#include "launch/server/api_error.h"
#include "planner/core/error.h"
#include "planner/kv_cache.h"
#include "runtime/checkpoint/fingerprint.h"
#include "runtime/generate/generate.h"
#include "runtime/model/forward.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/session_file.h"
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
        dir_(dir),
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
    Lease lease(*this, [&] { return take_for(prompt); });
    runtime::Session& session = *lease.session;
    try {
      return generate_on(session, request, reuse_prefix(session, prompt), max_tokens, callbacks, stop_requested);
    } catch (...) {
      session.reset();  // a feed that failed midway may have written rows past what the session says it holds
      throw;
    }
  }

 private:
  // Brings `session` to the longest prefix of `prompt` it can reuse (at least the prompt's last token is left to
  // compute: its logits start the answer) and returns the tokens still to feed; counts cached and computed tokens.
  std::vector<int32_t> reuse_prefix(runtime::Session& session, const std::vector<int32_t>& prompt) {
    int64_t reuse = options_.prefix_reuse ? common_prefix(session.tokens(), prompt) : 0;
    reuse = std::min(reuse, static_cast<int64_t>(prompt.size()) - 1);
    int64_t recomputed = 0;
    if (reuse < session.position() && reuse == 0) {
      session.reset();
      reuse = 0;
    } else if (reuse < session.position()) {
      recomputed = session.rewind(reuse);
    }
    cached_tokens_ += reuse - recomputed;
    computed_tokens_ += static_cast<int64_t>(prompt.size()) - reuse + recomputed;
    return {prompt.begin() + reuse, prompt.end()};
  }

  static int64_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    return std::mismatch(a.begin(), a.end(), b.begin(), b.end()).first - a.begin();
  }

  EngineResult generate_on(runtime::Session& session, const GenerationRequest& request,
                           const std::vector<int32_t>& prompt, int64_t max_tokens, const EngineCallbacks& callbacks,
                           const StopRequested& stop_requested) {
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

 public:
  SlotFile save_slot(int id, const std::string& file) override {
    Lease slot(*this, [&] { return take_slot(id); });
    const runtime::SessionFileStats st = runtime::save_session(*slot.session, fingerprint(), file);
    return {st.tokens, st.bytes};
  }
  SlotFile restore_slot(int id, const std::string& file) override {
    Lease slot(*this, [&] { return take_slot(id); });
    const runtime::SessionFileStats st = runtime::load_session(*slot.session, fingerprint(), file);
    return {st.tokens, st.bytes};
  }
  int64_t erase_slot(int id) override {
    Lease slot(*this, [&] { return take_slot(id); });
    const int64_t n = slot.session->position();
    slot.session->reset();
    return n;
  }

  std::vector<MetricSample> metrics() const override {
    int64_t kv = 0, workspace = 0, sessions = 0, snapshots = 0;
    {
      std::lock_guard lock(mutex_);
      std::set<const runtime::FeedBuffers*> counted;  // sessions may share their feed buffers: counted once
      for (const auto& s : sessions_) {
        kv += planner::kv_total(s->cache().bytes());
        snapshots += s->snapshot_bytes();
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
            bytes("kv_snapshots", snapshots),
            {"ferry_prompt_tokens_cached_total",
             "counter",
             "Prompt tokens a session already held (prefix reuse): not computed again",
             {},
             static_cast<double>(cached_tokens_.load())},
            {"ferry_prompt_tokens_computed_total",
             "counter",
             "Prompt tokens computed (with those a rewind to a reused prefix recomputed)",
             {},
             static_cast<double>(computed_tokens_.load())},
            {"ferry_sessions",
             "gauge",
             "Sequences allocated (KV cache and workspace each)",
             {},
             static_cast<double>(sessions)}};
  }

 private:
  // A session taken out of the idle ones (by `take`, called with mutex_ held) and given back at the end.
  struct Lease {
    template <class Take>
    Lease(V4Engine& e, Take&& take) : engine(e) {
      std::lock_guard lock(e.mutex_);
      session = take();
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

  // For a generate() call (mutex_ held): the idle session holding the longest prefix of the prompt (the next turn
  // of its conversation; the least recently used among equals). A new session rather than one the prompt shares
  // less than half of, while fewer than max_sessions exist: every conversation keeps its own cache as long as there
  // are slots for them.
  runtime::Session* take_for(const std::vector<int32_t>& prompt) {
    auto best = idle_.end();
    int64_t longest = -1;
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      const int64_t n = common_prefix((*it)->tokens(), prompt);
      if (n > longest || (n == longest && last_used_[*it] < last_used_[*best])) longest = n, best = it;
    }
    // llama-server's rule (--slot-prompt-similarity 0.5): the prompt reuses a session that shares at least half of
    // what it holds; a new session is made for one that shares less, while there is room for one.
    const bool similar = best != idle_.end() && 2 * longest >= (*best)->position();
    runtime::Session* session = nullptr;
    if (!similar && static_cast<int64_t>(sessions_.size()) < options_.max_sessions) {
      session = new_session();
    } else {
      if (best == idle_.end()) best = idle_.insert(idle_.end(), new_session());
      session = *best;
      idle_.erase(best);
    }
    last_used_[session] = ++uses_;
    return session;
  }

  // For a slot action (mutex_ held): slot `id`, the id-th session made (made now if need be). 404 beyond the
  // server's slots, 409 while a request uses it.
  runtime::Session* take_slot(int id) {
    if (id < 0 || id >= options_.max_sessions)
      throw ApiError(404, fmt::format("no slot {}: the server has {} (--parallel)", id, options_.max_sessions),
                     "not_found_error");
    while (static_cast<int64_t>(sessions_.size()) <= id) idle_.push_back(new_session());
    runtime::Session* session = sessions_[static_cast<size_t>(id)].get();
    const auto it = std::find(idle_.begin(), idle_.end(), session);
    if (it == idle_.end())
      throw ApiError(409, fmt::format("slot {} is busy with a request; retry when it is done", id), "conflict_error");
    idle_.erase(it);
    return session;
  }

  // The checkpoint's fingerprint, read once, for the slots' session files.
  const runtime::CheckpointFingerprint& fingerprint() {
    std::call_once(fingerprint_once_, [&] { fingerprint_ = runtime::checkpoint_fingerprint(dir_); });
    return fingerprint_;
  }

  // Called with mutex_ held (or from the constructor).
  runtime::Session* new_session() {
    runtime::SessionOptions so;
    so.ctx = options_.ctx;
    if (options_.configure_session) options_.configure_session(static_cast<int>(sessions_.size()), so);
    so.snapshot_every = so.mtp || !options_.prefix_reuse ? 0 : options_.snapshot_every;
    sessions_.push_back(std::make_unique<runtime::Session>(weights_, so));
    return sessions_.back().get();
  }

  const V4EngineOptions options_;
  const std::string dir_;
  const std::string id_;
  const runtime::ChatFormat format_;
  const runtime::Tokenizer tokenizer_;
  const std::optional<runtime::ModelWeights> own_weights_;  // without options.weights
  const runtime::ModelWeights& weights_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<runtime::Session>> sessions_;  // every session made, for the metrics
  std::vector<runtime::Session*> idle_;
  std::once_flag fingerprint_once_;
  runtime::CheckpointFingerprint fingerprint_;
  std::map<const runtime::Session*, uint64_t> last_used_;  // when each session was last leased (uses_)
  uint64_t uses_ = 0;
  std::atomic<int64_t> cached_tokens_{0}, computed_tokens_{0};  // prompt tokens reused, and computed
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

// `ferry perplexity --model DIR --file TEXT`: perplexity over fixed-size chunks, llama-perplexity's convention.
// The text is tokenized with the model's tokenizer (BOS in front) and cut into chunks of --ctx tokens; each chunk
// starts with BOS (its first token replaced by it, as llama-perplexity does) and runs from a fresh state; the
// logits of positions ctx/2 .. ctx-2 are scored against the tokens that follow them (the first half is context).
// --kl-divergence-base saves the run's top-K log-probabilities, --kl-divergence compares a run (another KV type,
// expert precision, placement) to them (launch/perplexity_scoring.h documents the approximation). Takes every
// model and placement flag `ferry run` does (launch/engine_setup.h), under mpirun too.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/kl_base_file.h"
#include "launch/perplexity_scoring.h"
#include "planner/core/error.h"
#include "planner/core/file_io.h"
#include "planner/core/units.h"
#include "planner/kv_cache.h"
#include "runtime/checkpoint/fingerprint.h"
#include "runtime/model/forward.h"
#include "runtime/text/tokenizer.h"

namespace ferry::launch {
namespace {

// The run's settings in words, for the KL report: "kv-type bf16, expert-activations int24, ubatch 512, CPU".
std::string describe_settings(const EngineFlags& flags, const runtime::SessionOptions& so) {
  std::string where = "CPU";
  const OffloadFlags& offload = flags.offload;
  if (offload.enabled()) {
    where = "--gpu " + offload.gpu;
    if (offload.cache_slots >= 0) where += fmt::format(" --expert-cache-slots {}", offload.cache_slots);
    if (!offload.plan_in.empty()) where += " --plan " + offload.plan_in;
  }
  return fmt::format("kv-type {}, expert-activations {}, ubatch {}, {}", planner::kv_type_name(so.kv_type),
                     core::activation_bits_name(so.expert_bits), so.ubatch, where);
}

// ---- The perplexity.

constexpr int64_t kDefaultCtx = 512;
constexpr int64_t kMinCtx = 3;  // the smallest chunk whose second half scores a position

// The chunks to evaluate, one after another, each starting with BOS.
struct Chunks {
  std::vector<int32_t> tokens;  // [count][ctx]
  int64_t ctx = 0, count = 0;
  std::span<const int32_t> chunk(int64_t i) const { return {tokens.data() + i * ctx, size_t(ctx)}; }
};

Chunks make_chunks(const runtime::Tokenizer& tokenizer, const std::string& file, int64_t ctx, int64_t max_chunks) {
  std::vector<int32_t> ids = tokenizer.encode(core::read_text_file(file));
  FERRY_CHECK(!ids.empty(), "--file {} has no text", file);
  const std::optional<int32_t> bos = tokenizer.bos_id();
  if (bos && ids[0] != *bos) ids.insert(ids.begin(), *bos);
  const auto n = static_cast<int64_t>(ids.size());
  FERRY_CHECK(n >= ctx, "--file {} has {} tokens, fewer than one chunk of --ctx {}: give a smaller --ctx or more text",
              file, n, ctx);
  Chunks c;
  c.ctx = ctx;
  c.count = max_chunks > 0 ? std::min(n / ctx, max_chunks) : n / ctx;
  c.tokens.assign(ids.begin(), ids.begin() + c.count * ctx);
  if (bos)
    for (int64_t i = 0; i < c.count; ++i) c.tokens[i * ctx] = *bos;
  return c;
}

// What a --kl-divergence run accumulates against the base.
struct KlTotals {
  NllSum base_nll;
  std::vector<double> kl;
  int64_t same_top = 0;
  double sum_abs_dp = 0;  // |p_this - p_base| of the base's most likely token
};

std::string seconds(double s) {
  return s < 120    ? fmt::format("{:.1f} s", s)
         : s < 7200 ? fmt::format("{:.1f} min", s / 60)
                    : fmt::format("{:.1f} h", s / 3600);
}

class PerplexityCommand : public Command {
 public:
  explicit PerplexityCommand(CLI::App& parent) {
    app_ = parent.add_subcommand(
        "perplexity", "Perplexity of a text over fixed-size chunks; KL divergence of a run from a saved base run");
    engine_.add_to(*app_, "Chunk length in tokens, the context each chunk is evaluated in (default 512)");
    app_->add_option("-f,--file", file_, "The text to evaluate (UTF-8), tokenized with the model's tokenizer")
        ->required();
    app_->add_option("--chunks", max_chunks_, "Evaluate at most N chunks (default: every whole chunk of the text)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
    auto* save = app_->add_option("--kl-divergence-base", kl_base_out_,
                                  "Save this run's top-K log-probabilities at every scored position to FILE, the "
                                  "base that --kl-divergence compares other runs to");
    app_->add_option("--kl-divergence", kl_base_in_,
                     "Compare this run to the base saved in FILE (made with the same --model, --file, --ctx and "
                     "--chunks): KL divergence, top-1 agreement, perplexity ratio")
        ->excludes(save);
    app_->add_option("--kl-top-k", top_k_,
                     "Tokens kept per position in the --kl-divergence-base file (default 32; the rest is one bucket)")
        ->check(CLI::Range(1, 1 << 20));
    app_->footer(
        "Each chunk starts with BOS (its first token replaced by it) and runs from an empty KV cache; the second "
        "half of its positions is scored. Progress goes to stderr; `Final estimate: PPL = X +/- Y` (the standard "
        "error) and the KL statistics to stdout.");
  }
  CLI::App* app() const override { return app_; }

  int run() override {
    // Planned first (with --gpu, under mpirun with every rank): a plan that does not fit fails before loading.
    EngineSetup setup(engine_, *app_, kDefaultCtx);
    const runtime::SessionOptions& so = setup.planned();
    if (!setup.leads()) return follow(setup);
    FERRY_CHECK(so.ctx >= kMinCtx,
                "--ctx {} is too small: a chunk needs at least {} tokens (its first half is context)", so.ctx, kMinCtx);
    const runtime::Tokenizer tokenizer = runtime::Tokenizer::from_model_dir(engine_.model);
    const Chunks chunks = make_chunks(tokenizer, file_, so.ctx, max_chunks_);
    KlBaseHeader header;
    header.ctx = chunks.ctx;
    header.chunks = chunks.count;
    header.top_k = top_k_;
    header.tokens_hash = hash_tokens(chunks.tokens);
    header.model = runtime::checkpoint_fingerprint(engine_.model);
    header.settings = describe_settings(engine_, so);
    std::optional<KlBase> base;
    if (!kl_base_in_.empty()) base = read_kl_base(kl_base_in_, header);

    setup.load();
    runtime::Session session(setup.weights(), setup.session_options());
    if (setup.offload() && engine_.offload.verbose) std::cerr << setup.offload()->memory_report();
    header.vocab = static_cast<int32_t>(setup.checkpoint().config().vocab_size);
    FERRY_CHECK(top_k_ <= header.vocab, "--kl-top-k {} exceeds the vocabulary ({} tokens)", top_k_, header.vocab);
    std::optional<KlBase> saved;
    if (!kl_base_out_.empty()) saved.emplace().header = header;
    std::optional<KlTotals> kl;
    if (base) kl.emplace();

    const NllSum nll = evaluate(session, header.vocab, chunks, base ? &*base : nullptr, saved ? &*saved : nullptr,
                                kl ? &*kl : nullptr);
    setup.finish();
    std::cout << fmt::format("Final estimate: PPL = {:.4f} +/- {:.5f}\n", nll.ppl(), nll.ppl_error());
    if (kl) print_kl(*base, header.settings, nll, *kl);
    std::cout << std::flush;
    if (saved) {
      write_kl_base(kl_base_out_, *saved);
      std::cerr << fmt::format("wrote the top-{} log-probabilities of {} positions to {}\n", top_k_, saved->positions(),
                               kl_base_out_);
    }
    std::cerr << setup.report(session);
    return kExitOk;
  }

 private:
  // Under mpirun, a rank other than 0: computes its part of every chunk rank 0 feeds, then its report.
  static int follow(EngineSetup& setup) {
    setup.load();
    runtime::Session session(setup.weights(), setup.session_options());
    setup.ranks()->follow(session);
    setup.report(session);  // collective: rank 0 prints every rank's
    return kExitOk;
  }

  // Runs every chunk from a fresh state and scores it; prints progress and the running estimate on stderr.
  NllSum evaluate(runtime::Session& session, int64_t vocab, const Chunks& chunks, const KlBase* base, KlBase* saved,
                  KlTotals* kl) const {
    const bool tty = isatty(STDERR_FILENO);
    const int64_t first = chunks.ctx / 2, scored = scored_per_chunk(chunks.ctx);
    std::cerr << fmt::format("perplexity: {} chunks of {} tokens, {} positions scored per chunk\n", chunks.count,
                             chunks.ctx, scored);
    const auto start = std::chrono::steady_clock::now();
    NllSum nll;
    std::vector<float> logits;
    std::vector<char> mask(static_cast<size_t>(vocab), 0);
    std::vector<float> logp(static_cast<size_t>(top_k_));
    const int64_t piece = session.options().ubatch;
    for (int64_t c = 0; c < chunks.count; ++c) {
      const std::span<const int32_t> chunk = chunks.chunk(c);
      session.reset();
      // The context half without logits (no head computed), then the scored half a prefill chunk at a time, so
      // that the logits held stay [ubatch, vocab] at any --ctx: every split computes the same logits bit for bit.
      // The chunk's last token is only a target: its own logits predict nothing here.
      session.feed(chunk.first(size_t(first)), nullptr, nullptr);
      for (int64_t at = first; at < first + scored; at += piece) {
        const int64_t n = std::min(piece, first + scored - at);
        session.feed(chunk.subspan(size_t(at), size_t(n)), &logits, nullptr);
        for (int64_t j = at; j < at + n; ++j) {
          const std::span<const float> row(logits.data() + (j - at) * vocab, size_t(vocab));
          const RowSummary s = summarize_row(row);
          const double v = s.log_sum_exp - row[chunk[j + 1]];
          nll.add(v);
          if (saved) save_position(*saved, row, s, v, mask);
          if (kl) compare_position(*base, c * scored + (j - first), row, s, *kl, logp, mask);
        }
      }
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double per_chunk = elapsed / static_cast<double>(c + 1);
      std::cerr << fmt::format("{}chunk {}/{}, {}/chunk, ETA {}, PPL = {:.4f} +/- {:.5f}{}", tty ? "\r" : "", c + 1,
                               chunks.count, seconds(per_chunk), seconds(per_chunk * (chunks.count - c - 1)), nll.ppl(),
                               nll.ppl_error(), tty && c + 1 < chunks.count ? "" : "\n");
    }
    return nll;
  }

  void save_position(KlBase& out, std::span<const float> row, const RowSummary& s, double nll,
                     std::vector<char>& mask) const {
    const std::vector<int32_t> ids = top_ids(row, top_k_);
    std::vector<float> logp(ids.size());
    float tail = 0;
    bucket_log_probs(row, s, ids, logp, &tail, mask);
    out.nll.push_back(nll);
    out.log_tail.push_back(tail);
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.logp.insert(out.logp.end(), logp.begin(), logp.end());
  }

  static void compare_position(const KlBase& base, int64_t p, std::span<const float> row, const RowSummary& s,
                               KlTotals& kl, std::vector<float>& logp, std::vector<char>& mask) {
    const auto ids = base.ids_at(p);
    const auto base_logp = base.logp_at(p);
    logp.resize(ids.size());
    float tail = 0;
    bucket_log_probs(row, s, ids, logp, &tail, mask);
    kl.kl.push_back(bucket_kl(base_logp, base.log_tail[p], logp, tail));
    kl.base_nll.add(base.nll[p]);
    kl.same_top += s.argmax == ids[0];
    kl.sum_abs_dp += std::fabs(std::exp(static_cast<double>(logp[0])) - std::exp(static_cast<double>(base_logp[0])));
  }

  void print_kl(const KlBase& base, const std::string& settings, const NllSum& nll, KlTotals& kl) const {
    std::vector<double>& v = kl.kl;
    const auto n = static_cast<int64_t>(v.size());
    double mean = 0;
    for (const double x : v) mean += x;
    mean /= static_cast<double>(std::max<int64_t>(n, 1));
    const double se = standard_error(v);
    std::sort(v.begin(), v.end());
    std::string out = fmt::format("KL divergence from the base {} ({} positions, top {} tokens + the rest)\n",
                                  kl_base_in_, n, base.header.top_k);
    out += fmt::format("  base run:  {}\n  this run:  {}\n", base.header.settings, settings);
    out += fmt::format("  PPL(base) = {:.4f} +/- {:.5f}\n  PPL(this) = {:.4f} +/- {:.5f}\n", kl.base_nll.ppl(),
                       kl.base_nll.ppl_error(), nll.ppl(), nll.ppl_error());
    out += fmt::format("  PPL(this)/PPL(base) = {:.6f}\n", std::exp(nll.mean() - kl.base_nll.mean()));
    out += fmt::format("  mean KL = {:.6e} +/- {:.6e}\n", mean, se);
    out += fmt::format("  median KL = {:.6e}\n", quantile(v, 0.5));
    for (const double q : {0.90, 0.95, 0.99, 0.999})
      out += fmt::format("  {:g}% KL = {:.6e}\n", q * 100, quantile(v, q));
    out += fmt::format("  max KL = {:.6e}\n", v.empty() ? 0.0 : v.back());
    out += fmt::format("  top-1 agreement = {:.3f}% ({}/{})\n", 100.0 * kl.same_top / std::max<int64_t>(n, 1),
                       kl.same_top, n);
    out +=
        fmt::format("  mean |Δp| of the base's top token = {:.6f}%\n", 100.0 * kl.sum_abs_dp / std::max<int64_t>(n, 1));
    std::cout << out;
  }

  CLI::App* app_ = nullptr;
  EngineFlags engine_;
  std::string file_, kl_base_out_, kl_base_in_;
  int64_t max_chunks_ = -1;
  // 32: the tokens that decide top-1 and nearly all of a confident model's mass, at ~270 bytes a position (a 1M
  // context's base is ~140 MB); the rest stays one bucket, so the KL stays a lower bound either way, and a larger K
  // only tightens it where the two runs reshuffle the tail.
  int top_k_ = 32;
};

}  // namespace

std::unique_ptr<Command> make_perplexity_command(CLI::App& parent) {
  return std::make_unique<PerplexityCommand>(parent);
}

}  // namespace ferry::launch

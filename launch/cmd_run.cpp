// `ferry run`: load a V4 checkpoint, prefill a prompt (token ids, or text through the model's tokenizer) on the
// CPU, generate, and report speed and memory (planned next to used). `--logits-out` writes every position's
// logits as NumPy float32.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/checkpoint/fingerprint.h"
#include "runtime/backend/worker_threads.h"
#include "runtime/generate/generate.h"
#include "runtime/generate/npy.h"
#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/mxfp4_activation.h"
#include "runtime/model/session_file.h"
#include "runtime/text/tokenizer.h"

namespace ferry::launch {
namespace {

std::vector<int32_t> parse_tokens(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    FERRY_CHECK(b != std::string::npos, "--tokens has an empty item: give comma-separated token ids like 1,2,3");
    item = item.substr(b, e - b + 1);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    FERRY_CHECK(used == item.size() && v >= 0 && v <= INT32_MAX,
                "--tokens: '{}' is not a token id (a non-negative integer)", item);
    ids.push_back(static_cast<int32_t>(v));
  }
  FERRY_CHECK(!ids.empty(), "--tokens is empty: give comma-separated token ids like 1,2,3");
  return ids;
}

// DeepSeek's models expect a document to begin with BOS (V3's tokenizer_config.json adds it, V4's chat encoding
// writes it), so --prompt gets one unless the text already starts with it.
std::vector<int32_t> encode_prompt(const runtime::Tokenizer& tokenizer, const std::string& text) {
  std::vector<int32_t> ids = tokenizer.encode(text);
  if (auto bos = tokenizer.bos_id(); bos && (ids.empty() || ids[0] != *bos)) ids.insert(ids.begin(), *bos);
  FERRY_CHECK(!ids.empty(), "--prompt is empty and the tokenizer has no BOS token to start it");
  return ids;
}

// Rewrites one stderr line with the prefill's progress and speed.
std::function<void(int64_t, int64_t)> prefill_progress_printer() {
  const auto start = std::chrono::steady_clock::now();
  return [start](int64_t done, int64_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\rprefill %lld/%lld tokens (%.0f tok/s)", static_cast<long long>(done),
                 static_cast<long long>(total), done / std::max(s, 1e-9));
    if (done == total) std::fprintf(stderr, "\n");
  };
}

void print_timing(const runtime::GenerateResult& r, core::ActivationBits expert_bits) {
  std::fprintf(stderr,
               "timing: prefill %lld tokens in %.3f s (%.1f tok/s), decode %lld tokens in %.3f s (%.1f tok/s), "
               "kernels: fp8 %s, mxfp4 %s %s, %s\n",
               static_cast<long long>(r.prompt_tokens), r.prefill_seconds,
               r.prompt_tokens / std::max(r.prefill_seconds, 1e-9), static_cast<long long>(r.decoded_tokens),
               r.decode_seconds, r.decoded_tokens / std::max(r.decode_seconds, 1e-9), runtime::cpu::matvec_isa(),
               runtime::cpu::isa_name(runtime::cpu::mxfp4_isa()), core::activation_bits_name(expert_bits),
               runtime::worker_threads_text().c_str());
}

// --session FILE, before generating (llama.cpp's --prompt-cache): the sequence saved in FILE is put back and
// only the prompt's tokens after it are fed; the prompt must extend it. Returns the tokens to feed.
std::vector<int32_t> resume_session(runtime::Session& session, const runtime::CheckpointFingerprint& model,
                                    const std::string& file, const std::vector<int32_t>& prompt) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(file, ec))) {
    std::cerr << fmt::format("session: {} does not exist yet; fed all {} prompt tokens\n", file, prompt.size());
    return prompt;
  }
  runtime::load_session(session, model, file);
  const std::vector<int32_t>& saved = session.tokens();
  const auto differ = std::mismatch(saved.begin(), saved.end(), prompt.begin(), prompt.end()).first - saved.begin();
  FERRY_CHECK(differ == static_cast<int64_t>(saved.size()),
              "{}: the prompt does not start with the {} tokens saved there (they differ at token {})", file,
              saved.size(), differ);
  FERRY_CHECK(prompt.size() > saved.size(), "{}: the prompt adds no token to the {} saved there", file, saved.size());
  std::cerr << fmt::format("session: restored {} tokens from {}; fed {} new\n", saved.size(), file,
                           prompt.size() - saved.size());
  return {prompt.begin() + static_cast<std::ptrdiff_t>(saved.size()), prompt.end()};
}

class RunCommand : public Command {
 public:
  explicit RunCommand(CLI::App& parent) {
    app_ = parent.add_subcommand("run", "Prefill a prompt and generate on the CPU; print the generated text or ids");
    auto* tokens = app_->add_option("--tokens", tokens_, "Prompt as comma-separated token ids, e.g. 0,42,7");
    prompt_option_ = app_->add_option("--prompt,-p", prompt_text_,
                                      "Prompt as text, tokenized with the model directory's tokenizer.json (BOS "
                                      "prepended); the generated text streams to stdout");
    tokens->excludes(prompt_option_);
    app_->add_option("-n,--n-predict", n_predict_, "Tokens to generate (default 16)")->check(CLI::Range(0, 1 << 24));
    engine_.add_to(*app_, "Context length the KV cache holds, e.g. 4096 or 128K (default 4096)");
    app_->add_option("--session", session_,
                     "KV session file: when it exists, the sequence saved there is restored and only the rest of "
                     "the prompt, which must extend it, is fed (--logits-out then has the rows of those tokens); "
                     "the prompt and generated tokens are saved there at the end");
    app_->add_option("--temp", sampler_.temperature, "Sampling temperature; 0 = greedy (default 0)")
        ->check(CLI::Range(0.0, 100.0));
    app_->add_option("--top-p", sampler_.top_p, "Nucleus sampling threshold in (0, 1] (default 1)")
        ->check(CLI::Range(1e-9, 1.0));
    app_->add_option("--top-k", sampler_.top_k, "Sample among the k most likely tokens; 0 = all (default 0)")
        ->check(CLI::NonNegativeNumber);
    app_->add_option("--seed", sampler_.seed, "Sampling seed (default 0)");
    app_->add_flag("--ignore-eos", ignore_eos_, "Keep generating after the end-of-sequence token");
    app_->add_option("--logits-out", logits_out_,
                     "Write the logits of every prompt position and generated token to FILE.npy (float32 [n, vocab])");
    app_->footer(
        "Give --prompt or --tokens. Prints the generated text (--prompt, special tokens left out) or ids "
        "(--tokens) on stdout; progress, timing and memory lines go to stderr.");
  }
  CLI::App* app() const override { return app_; }

  int run() override {
    const bool text_mode = prompt_option_->count() > 0;
    FERRY_CHECK(text_mode || app_->count("--tokens") > 0, "give the prompt as --prompt TEXT or --tokens IDS");
    std::optional<runtime::Tokenizer> tokenizer;
    if (text_mode) tokenizer = runtime::Tokenizer::from_model_dir(engine_.model);
    const std::vector<int32_t> prompt = text_mode ? encode_prompt(*tokenizer, prompt_text_) : parse_tokens(tokens_);
    // Planned first, from the checkpoint's headers (with --gpu, under mpirun, or --plan read and checked against
    // them): a plan that does not fit fails here, before any weight is read.
    EngineSetup engine(engine_, *app_, 4096);
    const runtime::SessionOptions& so = engine.planned();
    const int64_t need = static_cast<int64_t>(prompt.size()) + n_predict_;
    FERRY_CHECK(need <= so.ctx, "{} {} is smaller than the prompt ({} tokens) plus -n {}",
                engine_.from_plan() ? "the plan's context" : "--ctx", so.ctx, prompt.size(), n_predict_);
    const bool tty = isatty(STDERR_FILENO);
    if (tty) std::cerr << "loading " << engine_.model << " ...\n";
    engine.load();
    const auto& c = engine.checkpoint().config();
    for (int32_t t : prompt)
      FERRY_CHECK(t < c.vocab_size, "{}: token id {} is outside the vocabulary [0, {})",
                  text_mode ? "--prompt" : "--tokens", t, c.vocab_size);
    runtime::Session session(engine.weights(), engine.session_options());
    if (!engine.leads()) {
      engine.ranks()->follow(session);
      engine.report(session);  // collective: rank 0 prints every rank's
      return kExitOk;
    }
    if (engine.offload() && engine_.offload.verbose) std::cerr << engine.offload()->memory_report();

    std::optional<runtime::CheckpointFingerprint> fingerprint;
    if (!session_.empty()) fingerprint = runtime::checkpoint_fingerprint(engine_.model);
    const runtime::GenerateResult r = generate_and_print(
        session, fingerprint ? resume_session(session, *fingerprint, session_, prompt) : prompt, tokenizer, tty);
    if (fingerprint) {
      const runtime::SessionFileStats st = runtime::save_session(session, *fingerprint, session_);
      std::cerr << fmt::format("session: saved {} tokens to {} ({:.2f} MiB)\n", st.tokens, session_,
                               static_cast<double>(st.bytes) / (1 << 20));
    }
    engine.finish();
    if (!logits_out_.empty()) write_logits(r.logits, c.vocab_size);
    print_timing(r, so.expert_bits);
    std::cerr << engine.report(session);
    return kExitOk;
  }

 private:
  // Generates and prints the result on stdout: the text as it comes (--prompt) or the ids at the end (--tokens).
  runtime::GenerateResult generate_and_print(runtime::Session& session, const std::vector<int32_t>& prompt,
                                             const std::optional<runtime::Tokenizer>& tokenizer, bool tty) const {
    runtime::GenerateOptions go;
    go.n_predict = n_predict_;
    go.sampler = sampler_;
    go.stop_at_eos = !ignore_eos_;
    go.keep_logits = !logits_out_.empty();
    runtime::GenerateCallbacks cb;
    // Progress for prompts longer than one chunk, on a terminal only (logs stay clean).
    if (tty && static_cast<int64_t>(prompt.size()) > session.options().ubatch)
      cb.prefill_progress = prefill_progress_printer();
    std::optional<runtime::StreamDecoder> stream;
    if (tokenizer) {
      stream.emplace(*tokenizer, true);
      cb.on_token = [&stream](int32_t token) { std::cout << stream->push(token) << std::flush; };
    }
    runtime::GenerateResult r = runtime::generate(session, prompt, go, cb);
    if (stream) {
      std::cout << stream->flush();
    } else {
      for (size_t i = 0; i < r.tokens.size(); ++i) std::cout << (i ? "," : "") << r.tokens[i];
    }
    std::cout << std::endl;  // before the stderr lines, so a terminal shows them in order
    return r;
  }

  void write_logits(const std::vector<float>& logits, int64_t vocab) const {
    runtime::write_npy_f32(logits_out_, logits.data(), static_cast<int64_t>(logits.size()) / vocab, vocab);
    std::cerr << "wrote logits [" << logits.size() / vocab << ", " << vocab << "] to " << logits_out_ << "\n";
  }

  CLI::App* app_ = nullptr;
  CLI::Option* prompt_option_ = nullptr;
  std::string tokens_, prompt_text_, logits_out_, session_;
  int64_t n_predict_ = 16;
  runtime::SamplerOptions sampler_;
  bool ignore_eos_ = false;
  EngineFlags engine_;
};

}  // namespace

std::unique_ptr<Command> make_run_command(CLI::App& parent) { return std::make_unique<RunCommand>(parent); }

}  // namespace ferry::launch

// `ferry chat`: an interactive chat in the terminal over the same engine as `ferry serve`. The conversation is
// kept and re-encoded with the model's chat format every turn; the answer streams to stdout, speed to stderr.
//
// Ctrl-C while an answer streams stops that answer (a SIGINT handler sets a flag the engine asks between
// tokens); Ctrl-C at the prompt, /exit or end of input quits. Input is read with poll() + read() rather than
// std::getline so that a Ctrl-C at the prompt is noticed at once, whatever the terminal's line discipline.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/server/v4_engine.h"
#include "planner/core/error.h"
#include "planner/core/file_io.h"
#include "planner/core/units.h"

namespace ferry::launch {
namespace {

using server::FinishReason;
using Json = nlohmann::ordered_json;

// The one piece of process-wide state a signal handler can reach.
std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the SIGINT handler sets it");

extern "C" void on_sigint(int) { g_interrupted.store(true); }

// SA_RESTART: the engine's threads and stdout writes carry on through the signal; the prompt's poll() is
// woken regardless (Linux never restarts poll).
class SigintFlag {
 public:
  SigintFlag() {
    struct sigaction sa = {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &previous_);
  }
  ~SigintFlag() { sigaction(SIGINT, &previous_, nullptr); }
  SigintFlag(const SigintFlag&) = delete;
  SigintFlag& operator=(const SigintFlag&) = delete;

 private:
  struct sigaction previous_ = {};
};

enum class Input { Line, End, Interrupted };

// One line of stdin without its newline. A Ctrl-C discards what was typed of the line so far: Interrupted
// when nothing was (on a terminal the line is not ours until Enter, so always), otherwise a fresh prompt.
Input read_line(std::string& line, const std::string& prompt) {
  line.clear();
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  for (;;) {
    if (g_interrupted.exchange(false)) {
      if (line.empty()) return Input::Interrupted;
      line.clear();
      std::fputs(("\n" + prompt).c_str(), stdout);
      std::fflush(stdout);
    }
    pollfd in{STDIN_FILENO, POLLIN, 0};
    const int ready = poll(&in, 1, 200);
    if (ready < 0 && errno != EINTR) return Input::End;
    if (ready <= 0) continue;
    char c = 0;
    const ssize_t n = read(STDIN_FILENO, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return line.empty() ? Input::End : Input::Line;
    if (c == '\n') return Input::Line;
    line += c;
  }
}

// The answer on stdout: reasoning dimmed on a terminal (or marked "[thinking]" elsewhere), then the content.
class AnswerPrinter {
 public:
  explicit AnswerPrinter(bool tty) : tty_(tty) {}

  void reasoning(std::string_view text) {
    if (!in_reasoning_) {
      std::fputs(tty_ ? "\x1b[2m" : "[thinking] ", stdout);
      in_reasoning_ = true;
    }
    write(text);
  }
  void content(std::string_view text) {
    end_reasoning();
    write(text);
  }
  void finish() {
    end_reasoning();
    std::fputs("\n", stdout);
    std::fflush(stdout);
  }

 private:
  void end_reasoning() {
    if (!in_reasoning_) return;
    std::fputs(tty_ ? "\x1b[0m\n" : "\n[answer] ", stdout);
    in_reasoning_ = false;
  }
  static void write(std::string_view text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }

  bool tty_;
  bool in_reasoning_ = false;
};

class ChatCommand : public Command {
 public:
  explicit ChatCommand(CLI::App& parent) {
    app_ = parent.add_subcommand("chat", "Interactive chat in the terminal (the model's chat format, streamed)");
    engine_.add_to(*app_, "Context length: the whole conversation, e.g. 4096 or 128K (default 4096)");
    engine_.add_reuse_to(*app_);
    app_->add_option("-n,--n-predict", n_predict_, "Most tokens per answer (default: the rest of the context)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    app_->add_option("--temp", sampler_.temperature, "Sampling temperature; 0 = greedy (default 0.6)")
        ->check(CLI::Range(0.0, 2.0));
    app_->add_option("--top-p", sampler_.top_p, "Nucleus sampling threshold in (0, 1] (default 0.95)")
        ->check(CLI::Range(1e-9, 1.0));
    app_->add_option("--top-k", sampler_.top_k, "Sample among the k most likely tokens; 0 = all (default 0)")
        ->check(CLI::NonNegativeNumber);
    app_->add_option("--seed", sampler_.seed, "Sampling seed of the first answer, +1 for each next one (default 0)");
    app_->add_flag("--thinking", thinking_, "DeepSeek's thinking mode: the model reasons before it answers");
    app_->add_option("--system", system_, "A system prompt at the start of the conversation");
    app_->add_flag("--ignore-eos", ignore_eos_, "Answers run to -n tokens, through the end-of-turn token (tests)");
    app_->footer(
        "Type a message and Enter. /reset clears the conversation; /save NAME writes it (NAME.json) and its KV cache "
        "(NAME) to files, /load NAME continues a saved one; /exit, Ctrl-D or Ctrl-C at the prompt quits; "
        "Ctrl-C during an answer stops that answer. Speed goes to stderr after each answer.");
  }
  CLI::App* app() const override { return app_; }

  int run() override {
    EngineSetup setup(engine_, *app_, 4096);
    if (!setup.leads()) {
      // Under mpirun: rank 0 (mpirun gives it stdin) chats; the other ranks compute their part of each answer.
      setup.load();
      setup.follow_slots();
      return kExitOk;
    }
    const int status = converse(setup);
    setup.finish();
    return status;
  }

 private:
  // The conversation, until /exit, end of input or Ctrl-C at the prompt.
  int converse(EngineSetup& setup) {
    if (isatty(STDERR_FILENO)) std::fprintf(stderr, "loading %s ...\n", engine_.model.c_str());
    const std::unique_ptr<server::Engine> engine = open_v4_engine(setup, ignore_eos_);
    std::fprintf(stderr,
                 "ferry chat: %s, context %lld tokens%s. /reset clears the conversation, /exit quits; Ctrl-C stops "
                 "an answer.\n",
                 engine->model_id().c_str(), static_cast<long long>(engine->context_length()),
                 thinking_ ? ", thinking mode" : "");
    const SigintFlag sigint;  // from here on Ctrl-C is ours; while loading it quits at once
    const std::string prompt = isatty(STDIN_FILENO) || isatty(STDOUT_FILENO) ? "> " : "";
    reset();
    for (std::string line;;) {
      const Input in = read_line(line, prompt);
      if (in != Input::Line) {
        std::fputs("\n", stdout);
        return kExitOk;
      }
      if (line.empty()) continue;
      if (line == "/exit" || line == "/quit") return kExitOk;
      if (line == "/reset") {
        reset();
        std::fprintf(stderr, "(conversation cleared)\n");
        continue;
      }
      if (line.rfind("/save ", 0) == 0 || line.rfind("/load ", 0) == 0) {
        save_or_load(*engine, line.substr(0, 5), line.substr(6));
        continue;
      }
      if (line[0] == '/') {
        std::fprintf(stderr,
                     "unknown command %s: /reset clears the conversation, /save NAME and /load NAME keep it in a file, "
                     "/exit quits\n",
                     line.c_str());
        continue;
      }
      answer(*engine, line);
    }
  }

  // /save NAME: the conversation to NAME.json and its KV cache to NAME (a session file), so that /load NAME, in this
  // chat or a later one, continues it exactly without computing it again. /load changes nothing unless both read.
  void save_or_load(server::Engine& engine, const std::string& command, const std::string& name) {
    try {
      FERRY_CHECK(!name.empty() && name.find_first_not_of(' ') != std::string::npos, "give a file name: {} NAME",
                  command);
      const std::string conversation = name + ".json";
      if (command == "/save") {
        core::write_file_atomically(conversation, [&](std::ostream& out) {
          out << Json{{"history", history_}, {"turns", turns_}}.dump(1) << "\n";
        });
        const server::Engine::SlotFile st = engine.save_slot(0, name);
        std::fprintf(stderr, "(saved %zu messages and %lld tokens to %s)\n", history_.size(),
                     static_cast<long long>(st.tokens), name.c_str());
        return;
      }
      Json saved;
      try {
        saved = Json::parse(core::read_text_file(conversation));
      } catch (const Json::exception& e) {
        FERRY_THROW("{} is not a saved conversation ({})", conversation, e.what());
      }
      FERRY_CHECK(saved.is_object() && saved.contains("history") && saved["history"].is_array() &&
                      saved.contains("turns") && saved["turns"].is_number_unsigned(),
                  "{} is not a saved conversation (no history and turns)", conversation);
      const server::Engine::SlotFile st = engine.restore_slot(0, name);
      history_ = saved["history"];
      turns_ = saved["turns"].get<uint64_t>();
      std::fprintf(stderr, "(loaded %zu messages and %lld tokens from %s)\n", history_.size(),
                   static_cast<long long>(st.tokens), name.c_str());
    } catch (const ferry::Error& e) {
      std::fprintf(stderr, "ferry chat: %s: %s (the conversation is unchanged)\n", command.c_str(), e.what());
    }
  }

  void reset() {
    history_ = Json::array();
    if (!system_.empty()) history_.push_back({{"role", "system"}, {"content", system_}});
  }

  // One turn: the user's message and the streamed answer, both kept in the history (an answer stopped by
  // Ctrl-C as far as it went). A message that cannot be encoded or does not fit is dropped with one line.
  void answer(server::Engine& engine, const std::string& text) {
    server::GenerationRequest request;
    request.messages = history_;
    request.messages.push_back({{"role", "user"}, {"content", text}});
    request.thinking = thinking_;
    request.sampler = sampler_;
    request.sampler.seed = sampler_.seed + turns_;
    std::vector<int32_t> ids;
    try {
      ids = engine.encode_prompt(request);
    } catch (const ferry::Error& e) {
      std::fprintf(stderr, "ferry chat: cannot encode that message: %s\n", e.what());
      return;
    }
    const int64_t prompt_tokens = static_cast<int64_t>(ids.size());
    const int64_t room = engine.context_length() - prompt_tokens;
    if (room < 1) {
      std::fprintf(stderr,
                   "ferry chat: the conversation (%lld tokens) no longer fits the context of %lld; /reset "
                   "to start over\n",
                   static_cast<long long>(prompt_tokens), static_cast<long long>(engine.context_length()));
      return;
    }
    const int64_t max_tokens = n_predict_ ? std::min(n_predict_, room) : room;

    AnswerPrinter printer(isatty(STDOUT_FILENO));
    std::string reasoning, content;
    server::EngineCallbacks cb;
    cb.on_reasoning = [&](std::string_view t) {
      reasoning += t;
      printer.reasoning(t);
    };
    cb.on_content = [&](std::string_view t) {
      content += t;
      printer.content(t);
    };
    g_interrupted = false;
    const server::EngineResult r = engine.generate(request, ids, max_tokens, cb, [] { return g_interrupted.load(); });
    g_interrupted = false;
    printer.finish();
    ++turns_;

    Json reply = {{"role", "assistant"}, {"content", content}};
    if (thinking_) reply["reasoning_content"] = reasoning;
    history_ = std::move(request.messages);
    history_.push_back(std::move(reply));
    const char* why = r.finish == FinishReason::Cancelled ? " (stopped)"
                      : r.finish == FinishReason::Length  ? " (length limit)"
                                                          : "";
    std::fprintf(stderr, "[prompt %lld tokens, %.1f tok/s; answer %lld tokens, %.1f tok/s%s]\n",
                 static_cast<long long>(prompt_tokens), prompt_tokens / std::max(r.prefill_seconds, 1e-9),
                 static_cast<long long>(r.completion_tokens), r.completion_tokens / std::max(r.decode_seconds, 1e-9),
                 why);
  }

  CLI::App* app_ = nullptr;
  EngineFlags engine_;
  std::string system_;
  int64_t n_predict_ = 0;  // 0: the rest of the context
  runtime::SamplerOptions sampler_{.temperature = 0.6, .top_p = 0.95};
  bool thinking_ = false, ignore_eos_ = false;
  Json history_;
  uint64_t turns_ = 0;
};

}  // namespace

std::unique_ptr<Command> make_chat_command(CLI::App& parent) { return std::make_unique<ChatCommand>(parent); }

}  // namespace ferry::launch

#include "launch/server/generation_job.h"

#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

#include "launch/server/stop_matcher.h"
#include "planner/core/log.h"

namespace ferry::launch::server {

namespace {

// One job while it runs: the engine's events pass through the stop sequences into either server-sent events
// (stream) or the answer sent at the end.
class JobRun {
 public:
  JobRun(const Job& job, const Writer& write)
      : job_(job),
        request_(job.request),
        write_(write),
        stops_(request_.stop),
        chunks_(job.header, request_.include_usage) {}

  JobOutcome run(Engine& engine, const StopRequested& cancelled) {
    if (request_.stream) send(chunks_.start());
    const std::string failure = generate(engine, cancelled);
    if (outcome_.client_gone) return outcome_;
    if (const std::optional<ApiError> error = job_error(failure)) {
      // The 200 status line went out with the first byte; an error object is all that is left to send.
      send(request_.stream ? chunks_.error(*error) : dump_json(error_body(*error)));
      return outcome_;
    }
    finish_answer();
    return outcome_;
  }

 private:
  void send(const std::string& bytes) {
    if (!outcome_.client_gone && !bytes.empty() && !write_(bytes)) outcome_.client_gone = true;
  }

  void content(const std::string& text) {
    if (text.empty()) return;
    if (request_.stream) {
      send(chunks_.content(text));
    } else {
      answer_.content += text;
    }
  }

  EngineCallbacks callbacks() {
    EngineCallbacks callbacks;
    callbacks.on_reasoning = [this](std::string_view text) {
      if (request_.stream) {
        send(chunks_.reasoning(text));
      } else {
        answer_.reasoning += text;
      }
    };
    callbacks.on_content = [this](std::string_view text) { content(stops_.feed(text)); };
    callbacks.on_tool_call = [this](const ToolCall& call) {
      if (request_.stream) {
        send(chunks_.tool_call(answer_.tool_calls.size(), call));
      }
      answer_.tool_calls.push_back(call);
    };
    return callbacks;
  }

  // Runs the engine (never throws): the engine's error message, empty when it returned.
  std::string generate(Engine& engine, const StopRequested& cancelled) {
    // A matched stop sequence ends generation like the model's own end of turn.
    const StopRequested stop_requested = [this, &cancelled] {
      if (outcome_.client_gone || stops_.matched()) return true;
      if (cancelled && cancelled()) server_cancelled_ = true;
      return server_cancelled_;
    };
    const auto start = std::chrono::steady_clock::now();
    std::string failure;
    try {
      outcome_.engine = engine.generate(request_.generation, job_.prompt, job_.max_tokens, callbacks(), stop_requested);
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown error";
    }
    outcome_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return failure;
  }

  // The error object that ends the answer instead of a finish: the engine failed or the server is shutting down.
  std::optional<ApiError> job_error(const std::string& failure) {
    if (!failure.empty()) {
      core::logger().error("generation failed: {}", failure);
      outcome_.failed = true;
      return ApiError(500, "generation failed: " + failure, "server_error");
    }
    if (server_cancelled_ && !stops_.matched())
      return ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
    return std::nullopt;
  }

  void finish_answer() {
    content(stops_.finish());
    answer_.finish_reason = stops_.matched() ? "stop" : finish_reason_name(outcome_.engine.finish);
    answer_.usage = {static_cast<int64_t>(job_.prompt.size()), outcome_.engine.completion_tokens};
    if (request_.stream) {
      send(chunks_.finish(answer_.finish_reason));
      send(chunks_.usage(answer_.usage));
      send(StreamChunks::done());
    } else {
      send(dump_json(completion_object(job_.header, answer_)));
    }
  }

  const Job& job_;
  const ApiRequest& request_;
  const Writer& write_;
  StopMatcher stops_;
  StreamChunks chunks_;
  Answer answer_;
  JobOutcome outcome_;
  bool server_cancelled_ = false;  // the server asked to stop (not the client, not a stop sequence)
};

}  // namespace

JobOutcome run_job(Engine& engine, const Job& job, const Writer& write, const StopRequested& cancelled) {
  return JobRun(job, write).run(engine, cancelled);
}

}  // namespace ferry::launch::server

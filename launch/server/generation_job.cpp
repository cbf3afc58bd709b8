#include "launch/server/generation_job.h"

#include <chrono>
#include <exception>
#include <optional>

#include "launch/server/stop_matcher.h"
#include "planner/core/log.h"

namespace ferry::launch::server {

JobOutcome run_job(Engine& engine, const Job& job, const Writer& write, const StopRequested& cancelled) {
  const ApiRequest& request = job.request;
  const bool stream = request.stream;
  StopMatcher stops(request.stop);
  StreamChunks chunks(job.header, request.include_usage);
  Answer answer;
  JobOutcome outcome;
  auto send = [&](const std::string& bytes) {
    if (!outcome.client_gone && !bytes.empty() && !write(bytes)) outcome.client_gone = true;
  };
  auto content = [&](const std::string& text) {
    if (text.empty()) return;
    if (stream) {
      send(chunks.content(text));
    } else {
      answer.content += text;
    }
  };

  EngineCallbacks callbacks;
  callbacks.on_reasoning = [&](std::string_view text) {
    if (stream) {
      send(chunks.reasoning(text));
    } else {
      answer.reasoning += text;
    }
  };
  callbacks.on_content = [&](std::string_view text) { content(stops.feed(text)); };
  callbacks.on_tool_call = [&](const ToolCall& call) {
    if (stream) {
      send(chunks.tool_call(answer.tool_calls.size(), call));
    }
    answer.tool_calls.push_back(call);
  };
  // A matched stop sequence ends generation like the model's own end of turn.
  bool server_cancelled = false;
  const StopRequested stop_requested = [&] {
    if (outcome.client_gone || stops.matched()) return true;
    if (cancelled && cancelled()) server_cancelled = true;
    return server_cancelled;
  };

  if (stream) send(chunks.start());
  const auto start = std::chrono::steady_clock::now();
  std::string failure;
  try {
    outcome.engine = engine.generate(request.generation, job.prompt, job.max_tokens, callbacks, stop_requested);
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "unknown error";
  }
  outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (outcome.client_gone) return outcome;

  std::optional<ApiError> error;
  if (!failure.empty()) {
    core::logger().error("generation failed: {}", failure);
    outcome.failed = true;
    error = ApiError(500, "generation failed: " + failure, "server_error");
  } else if (server_cancelled && !stops.matched()) {
    error = ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
  }
  if (error) {
    // The 200 status line went out with the first byte; an error object is all that is left to send.
    send(stream ? chunks.error(*error) : dump_json(error_body(*error)));
    return outcome;
  }

  content(stops.finish());
  answer.finish_reason = stops.matched() ? "stop" : finish_reason_name(outcome.engine.finish);
  answer.usage = {static_cast<int64_t>(job.prompt.size()), outcome.engine.completion_tokens};
  if (stream) {
    send(chunks.finish(answer.finish_reason));
    send(chunks.usage(answer.usage));
    send(StreamChunks::done());
  } else {
    send(dump_json(completion_object(job.header, answer)));
  }
  return outcome;
}

}  // namespace ferry::launch::server

#include "launch/server/openai_request.h"

#include <limits>
#include <random>
#include <set>

#include "launch/server/api_error.h"

namespace ferry::launch::server {
namespace {

// Ordered: the tool schemas keep the client's key order, which is part of the prompt text (runtime/text/chat_v4.h).
using json = nlohmann::ordered_json;

std::string describe(const json& v) {
  return std::string("got ") + (v.is_boolean()  ? "a boolean"
                                : v.is_number() ? "a number"
                                : v.is_string() ? "a string"
                                : v.is_array()  ? "an array"
                                : v.is_object() ? "an object"
                                                : "null");
}

// Reads the fields of one JSON object with type checks. A null value counts as absent, since clients send
// `"stop": null` for "default". Remembers what was read, so that whatever is left is unknown.
class Fields {
 public:
  Fields(const json& object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  std::string param(const std::string& key) const { return prefix_ + key; }

  const json* find(const std::string& key) {
    used_.insert(key);
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  void ignore(const std::string& key) { used_.insert(key); }

  std::optional<bool> boolean(const std::string& key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw wrong_type(key, "a boolean", *v);
    return v->get<bool>();
  }
  std::optional<double> number(const std::string& key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw wrong_type(key, "a number", *v);
    return v->get<double>();
  }
  std::optional<int64_t> integer(const std::string& key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) throw wrong_type(key, "an integer", *v);
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw invalid_request("'" + param(key) + "' is too large", param(key));
    return v->get<int64_t>();
  }
  std::optional<std::string> string(const std::string& key) {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }
  const json* object(const std::string& key) {
    const json* v = find(key);
    if (v && !v->is_object()) throw wrong_type(key, "an object", *v);
    return v;
  }
  const json* array(const std::string& key) {
    const json* v = find(key);
    if (v && !v->is_array()) throw wrong_type(key, "an array", *v);
    return v;
  }

  ApiError wrong_type(const std::string& key, const char* expected, const json& v) const {
    return invalid_request("'" + param(key) + "' must be " + expected + ", " + describe(v), param(key), "invalid_type");
  }
  ApiError unsupported(const std::string& key, const std::string& what) const {
    return invalid_request("'" + param(key) + "': " + what + " is not supported", param(key), "unsupported_value");
  }

  void reject_unknown() const {
    for (const auto& [key, value] : object_.items())
      if (!used_.count(key))
        throw invalid_request("Unrecognized request argument supplied: " + param(key), param(key), "unknown_parameter");
  }

 private:
  const json& object_;
  std::string prefix_;
  std::set<std::string> used_;
};

double in_range(Fields& f, const std::string& key, double value, double lo, double hi, bool lo_open) {
  if (value < lo || value > hi || (lo_open && value == lo))
    throw invalid_request("'" + f.param(key) + "' must be in " + (lo_open ? "(" : "[") + json(lo).dump() + ", " +
                              json(hi).dump() + "], got " + json(value).dump(),
                          f.param(key), "out_of_range");
  return value;
}

// Fields both endpoints share: model, streaming, length, sampling, stop, n, and the neutral-only ones.
void read_common(Fields& f, ApiRequest& r) {
  r.model = f.string("model").value_or("");
  r.stream = f.boolean("stream").value_or(false);
  if (const json* so = f.object("stream_options")) {
    if (!r.stream) throw invalid_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
    Fields sf(*so, "stream_options.");
    r.include_usage = sf.boolean("include_usage").value_or(false);
    sf.boolean("include_obfuscation");  // padding against length side channels; nothing to pad here
    sf.reject_unknown();
  }

  runtime::SamplerOptions& s = r.generation.sampler;
  s.temperature = 1;  // OpenAI's default
  if (auto t = f.number("temperature")) s.temperature = in_range(f, "temperature", *t, 0, 2, false);
  if (auto p = f.number("top_p")) s.top_p = in_range(f, "top_p", *p, 0, 1, true);
  if (auto k = f.integer("top_k")) {
    if (*k < -1)
      throw invalid_request("'top_k' must be >= 0 (0 or -1: off), got " + std::to_string(*k), "top_k", "out_of_range");
    s.top_k = *k < 0 ? 0 : *k;
  }
  if (auto seed = f.integer("seed")) {
    s.seed = static_cast<uint64_t>(*seed);
  } else {
    s.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
  }

  if (const json* stop = f.find("stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) throw f.wrong_type("stop", "a string or an array of strings", s);
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      throw f.wrong_type("stop", "a string or an array of strings", *stop);
    }
    if (r.stop.size() > kMaxStopSequences)
      throw invalid_request("'stop' has " + std::to_string(r.stop.size()) + " sequences; at most " +
                                std::to_string(kMaxStopSequences) + " are supported",
                            "stop", "out_of_range");
    for (const auto& s : r.stop)
      if (s.empty()) throw invalid_request("'stop' sequences must not be empty", "stop", "invalid_value");
  }

  if (auto n = f.integer("n"); n && *n != 1) throw f.unsupported("n", "n = " + std::to_string(*n) + " (only 1)");
  for (const char* key : {"frequency_penalty", "presence_penalty"})
    if (auto v = f.number(key); v && in_range(f, key, *v, -2, 2, false) != 0)
      throw f.unsupported(key, "a non-zero value");
  if (const json* bias = f.object("logit_bias"); bias && !bias->empty())
    throw f.unsupported("logit_bias", "a non-empty logit_bias");
  f.string("user");  // informational: who asked, for abuse monitoring
}

// Max tokens: a non-negative integer, from max_tokens or (chat) max_completion_tokens.
std::optional<int64_t> read_max_tokens(Fields& f, const std::string& key) {
  auto v = f.integer(key);
  if (v && *v < 0) throw invalid_request("'" + key + "' must be >= 0, got " + std::to_string(*v), key, "out_of_range");
  return v;
}

// A message's content: a string, or an array of text parts joined by newlines (as vLLM does); null allowed
// where `may_be_null`.
json read_content(const json& message, const std::string& where, bool may_be_null) {
  const auto it = message.find("content");
  if (it == message.end() || it->is_null()) {
    if (may_be_null) return nullptr;
    throw invalid_request("'" + where + ".content' is required", where + ".content", "missing_required_parameter");
  }
  if (it->is_string()) return *it;
  if (!it->is_array())
    throw invalid_request("'" + where + ".content' must be a string or an array of content parts, " + describe(*it),
                          where + ".content", "invalid_type");
  std::string text;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& part = (*it)[i];
    const std::string p = where + ".content[" + std::to_string(i) + "]";
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      throw invalid_request("'" + p + "' must be an object with a 'type'", p, "invalid_type");
    if (part["type"] != "text")
      throw invalid_request(
          "'" + p + "': content parts of type '" + part["type"].get<std::string>() + "' are not supported (text only)",
          p + ".type", "unsupported_value");
    if (!part.contains("text") || !part["text"].is_string())
      throw invalid_request("'" + p + ".text' must be a string", p + ".text", "invalid_type");
    if (i) text += '\n';
    text += part["text"].get<std::string>();
  }
  return text;
}

std::string required_string(const json& object, const std::string& key, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_string())
    throw invalid_request("'" + where + "." + key + "' must be a string", where + "." + key,
                          it == object.end() ? "missing_required_parameter" : "invalid_type");
  return it->get<std::string>();
}

json read_tool_calls(const json& calls, const std::string& where) {
  if (!calls.is_array()) throw invalid_request("'" + where + "' must be an array", where, "invalid_type");
  json out = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string p = where + "[" + std::to_string(i) + "]";
    const json& c = calls[i];
    if (!c.is_object() || !c.contains("function") || !c["function"].is_object())
      throw invalid_request("'" + p + "' must be an object with a 'function'", p, "invalid_type");
    if (c.contains("type") && c["type"] != "function")
      throw invalid_request("'" + p + ".type' must be \"function\"", p + ".type", "invalid_value");
    out.push_back({{"id", c.contains("id") ? required_string(c, "id", p) : "call_" + std::to_string(i)},
                   {"type", "function"},
                   {"function",
                    {{"name", required_string(c["function"], "name", p + ".function")},
                     {"arguments", required_string(c["function"], "arguments", p + ".function")}}}});
  }
  return out;
}

json read_messages(const json* messages) {
  if (!messages) throw invalid_request("'messages' is required", "messages", "missing_required_parameter");
  if (messages->empty()) throw invalid_request("'messages' must not be empty", "messages", "invalid_value");
  json out = json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const std::string p = "messages[" + std::to_string(i) + "]";
    const json& m = (*messages)[i];
    if (!m.is_object()) throw invalid_request("'" + p + "' must be an object, " + describe(m), p, "invalid_type");
    std::string role = required_string(m, "role", p);
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    json n = {{"role", role}};
    if (role == "system" || role == "user") {
      n["content"] = read_content(m, p, false);
    } else if (role == "tool") {
      n["content"] = read_content(m, p, false);
      n["tool_call_id"] = required_string(m, "tool_call_id", p);
    } else if (role == "assistant") {
      const bool has_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
      n["content"] = read_content(m, p, true);
      if (has_calls) n["tool_calls"] = read_tool_calls(m["tool_calls"], p + ".tool_calls");
      if (m.contains("reasoning_content") && !m["reasoning_content"].is_null())
        n["reasoning_content"] = required_string(m, "reasoning_content", p);
    } else {
      throw invalid_request(
          "'" + p + ".role' must be one of system, developer, user, assistant, tool; got '" + role + "'", p + ".role",
          "invalid_value");
    }
    if (m.contains("name") && !m["name"].is_null()) n["name"] = required_string(m, "name", p);
    out.push_back(std::move(n));
  }
  return out;
}

json read_tools(const json* tools) {
  json out = json::array();
  if (!tools) return out;
  for (size_t i = 0; i < tools->size(); ++i) {
    const std::string p = "tools[" + std::to_string(i) + "]";
    const json& t = (*tools)[i];
    if (!t.is_object()) throw invalid_request("'" + p + "' must be an object, " + describe(t), p, "invalid_type");
    if (required_string(t, "type", p) != "function")
      throw invalid_request("'" + p + ".type': only \"function\" tools are supported", p + ".type",
                            "unsupported_value");
    if (!t.contains("function") || !t["function"].is_object())
      throw invalid_request("'" + p + ".function' must be an object", p + ".function", "invalid_type");
    const json& fn = t["function"];
    if (required_string(fn, "name", p + ".function").empty())
      throw invalid_request("'" + p + ".function.name' must not be empty", p + ".function.name", "invalid_value");
    if (fn.contains("parameters") && !fn["parameters"].is_object() && !fn["parameters"].is_null())
      throw invalid_request("'" + p + ".function.parameters' must be an object (a JSON schema)",
                            p + ".function.parameters", "invalid_type");
    if (fn.contains("description") && !fn["description"].is_string() && !fn["description"].is_null())
      throw invalid_request("'" + p + ".function.description' must be a string", p + ".function.description",
                            "invalid_type");
    out.push_back(t);
  }
  return out;
}

// DeepSeek's thinking switch, from either spelling; both given must agree.
bool read_thinking(Fields& f) {
  std::optional<bool> from_kwargs, from_thinking;
  if (const json* kw = f.object("chat_template_kwargs")) {
    Fields kf(*kw, "chat_template_kwargs.");
    from_kwargs = kf.boolean("thinking");
    kf.reject_unknown();
  }
  if (const json* th = f.object("thinking")) {
    Fields tf(*th, "thinking.");
    const auto type = tf.string("type");
    if (!type || (*type != "enabled" && *type != "disabled"))
      throw invalid_request("'thinking.type' must be \"enabled\" or \"disabled\"", "thinking.type", "invalid_value");
    tf.reject_unknown();
    from_thinking = *type == "enabled";
  }
  if (from_kwargs && from_thinking && *from_kwargs != *from_thinking)
    throw invalid_request("'thinking' and 'chat_template_kwargs.thinking' disagree", "thinking", "invalid_value");
  return from_kwargs.value_or(from_thinking.value_or(false));
}

}  // namespace

json parse_json_body(std::string_view body) {
  json j = json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded()) throw invalid_request("We could not parse the JSON body of your request: it is not valid JSON");
  if (!j.is_object()) throw invalid_request("The body of your request must be a JSON object, " + describe(j));
  return j;
}

ApiRequest parse_chat_request(const json& body) {
  ApiRequest r;
  r.generation.kind = RequestKind::Chat;
  Fields f(body, "");
  r.generation.messages = read_messages(f.array("messages"));
  read_common(f, r);

  const auto max_tokens = read_max_tokens(f, "max_tokens");
  const auto max_completion_tokens = read_max_tokens(f, "max_completion_tokens");
  if (max_tokens && max_completion_tokens && *max_tokens != *max_completion_tokens)
    throw invalid_request("'max_tokens' and 'max_completion_tokens' disagree; give one", "max_completion_tokens",
                          "invalid_value");
  r.max_tokens = max_completion_tokens ? max_completion_tokens : max_tokens;

  json tools = read_tools(f.array("tools"));
  if (const json* choice = f.find("tool_choice")) {
    if (!choice->is_string() || (*choice != "auto" && *choice != "none"))
      throw f.unsupported("tool_choice", "tool_choice " + choice->dump() + " (only \"auto\" or \"none\")");
    if (*choice == "none") tools = json::array();
  }
  r.generation.tools = std::move(tools);
  if (auto parallel = f.boolean("parallel_tool_calls"); parallel && !*parallel)
    throw f.unsupported("parallel_tool_calls", "false (the model may call several tools at once)");
  r.generation.thinking = read_thinking(f);

  if (auto v = f.boolean("logprobs"); v && *v) throw f.unsupported("logprobs", "true");
  if (auto v = f.integer("top_logprobs"); v && *v != 0) throw f.unsupported("top_logprobs", "a non-zero value");
  if (const json* rf = f.object("response_format")) {
    if (!rf->contains("type") || (*rf)["type"] != "text")
      throw f.unsupported("response_format", "response_format " + rf->dump() + " (only {\"type\": \"text\"})");
  }
  if (const json* m = f.array("modalities"); m && *m != json::array({"text"}) && !m->empty())
    throw f.unsupported("modalities", "modalities other than [\"text\"]");
  for (const char* key :
       {"audio", "prediction", "functions", "function_call", "web_search_options", "reasoning_effort", "verbosity"})
    if (f.find(key)) throw f.unsupported(key, std::string("'") + key + "'");
  f.object("metadata");
  f.boolean("store");
  f.string("service_tier");
  f.string("prompt_cache_key");
  f.string("safety_identifier");
  f.reject_unknown();
  return r;
}

ApiRequest parse_completion_request(const json& body) {
  ApiRequest r;
  r.generation.kind = RequestKind::Completion;
  Fields f(body, "");
  const json* prompt = f.find("prompt");
  if (!prompt) throw invalid_request("'prompt' is required", "prompt", "missing_required_parameter");
  if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) prompt = &(*prompt)[0];
  if (!prompt->is_string())
    throw invalid_request(
        "'prompt' must be a string (token arrays and batches of prompts are not supported), " + describe(*prompt),
        "prompt", "invalid_type");
  r.generation.prompt = prompt->get<std::string>();
  read_common(f, r);
  r.max_tokens = read_max_tokens(f, "max_tokens");

  if (auto v = f.integer("logprobs"); v && *v != 0) throw f.unsupported("logprobs", "a non-zero value");
  if (auto v = f.boolean("echo"); v && *v) throw f.unsupported("echo", "true");
  if (auto v = f.integer("best_of"); v && *v != 1) throw f.unsupported("best_of", "best_of other than 1");
  if (auto v = f.string("suffix"); v && !v->empty()) throw f.unsupported("suffix", "a suffix (insertion)");
  f.reject_unknown();
  return r;
}

}  // namespace ferry::launch::server

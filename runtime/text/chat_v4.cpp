#include "runtime/text/chat_v4.h"

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <cstddef>
#include <map>
#include <optional>
#include <vector>

#include "planner/core/error.h"
#include "runtime/text/chat_dsml.h"
#include "runtime/text/chat_message.h"

namespace ferry::runtime {
namespace {

using chat::OrderedJson;

constexpr std::string_view kLatestReminderToken = "<｜latest_reminder｜>";

// DeepSeek's quick-instruction tasks: a user message with `task` is answered by a one-token-prefixed
// classification instead of a normal turn.
constexpr std::array<std::pair<std::string_view, std::string_view>, 6> kTaskTokens = {{
    {"action", "<｜action｜>"},
    {"query", "<｜query｜>"},
    {"authority", "<｜authority｜>"},
    {"domain", "<｜domain｜>"},
    {"title", "<｜title｜>"},
    {"read_url", "<｜read_url｜>"},
}};

constexpr std::string_view kMaxEffortPreamble =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

constexpr std::string_view kToolsPreamble = R"ferry(## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

)ferry";
constexpr std::string_view kToolsPostamble =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
constexpr std::string_view kResponseFormatPreamble =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

// A user turn is a list of blocks: its own text, and the results of tool calls (tool messages).
struct Block {
  bool tool_result = false;
  std::string text;
  std::string tool_call_id;
};

struct ToolCallOut {
  std::string id, name;
  OrderedJson arguments;  // an object
};

// One message after tool results are merged into user turns.
struct Message {
  std::string label;  // for errors: "message 3 (assistant)"
  std::string role;
  std::string content;
  std::string reasoning;
  std::vector<Block> blocks;  // user
  std::vector<ToolCallOut> tool_calls;
  const OrderedJson* tools = nullptr;  // a non-empty tools array
  const OrderedJson* response_format = nullptr;
  std::optional<std::string_view> task_token;
  std::string task;
  bool wo_eos = false;
};

const OrderedJson* tools_array(const OrderedJson& tools, const std::string& where) {
  if (tools.is_null()) return nullptr;
  FERRY_CHECK(tools.is_array(), "{} must be an array, got {}", where, tools.type_name());
  for (size_t i = 0; i < tools.size(); ++i) {
    const OrderedJson& t = tools[i];
    const std::string at = fmt::format("{}[{}]", where, i);
    FERRY_CHECK(t.is_object(), "{} must be an object", at);
    auto fn = t.find("function");
    FERRY_CHECK(fn != t.end() && fn->is_object(), "{} has no function object", at);
    auto name = fn->find("name");
    FERRY_CHECK(name != fn->end() && name->is_string() && !name->get_ref<const std::string&>().empty(),
                "{}: function without a name", at);
  }
  return tools.empty() ? nullptr : &tools;
}

std::vector<ToolCallOut> tool_calls_with_objects(const OrderedJson& m, size_t index, const std::string& label) {
  std::vector<ToolCallOut> out;
  for (chat::ToolCallIn& in : chat::tool_calls_of(m, index)) {
    ToolCallOut call{std::move(in.id), std::move(in.name), {}};
    if (in.arguments_object) {
      call.arguments = *in.arguments_object;
    } else {
      call.arguments = OrderedJson::parse(in.arguments_text, nullptr, /*allow_exceptions=*/false);
      FERRY_CHECK(!call.arguments.is_discarded(), "{}: arguments of tool call '{}' are not valid JSON: {}", label,
                  call.name, in.arguments_text);
    }
    FERRY_CHECK(call.arguments.is_object(), "{}: arguments of tool call '{}' must be a JSON object", label, call.name);
    out.push_back(std::move(call));
  }
  return out;
}

void read_task(const OrderedJson& m, size_t index, Message& msg) {
  std::optional<std::string> task = chat::string_field(m, index, "task");
  if (!task) return;
  for (const auto& [name, token] : kTaskTokens)
    if (*task == name) msg.task_token = token;
  FERRY_CHECK(msg.task_token, "{}: unknown task '{}' (known: action, query, authority, domain, title, read_url)",
              msg.label, *task);
  msg.task = *task;
}

// Reads and checks the messages, merging tool results and consecutive user messages into user turns the way
// DeepSeek's encoder does.
std::vector<Message> read_messages(const OrderedJson& messages, const OrderedJson& tools) {
  FERRY_CHECK(messages.is_array(), "messages must be an array, got {}", messages.type_name());
  std::vector<Message> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const OrderedJson& m = chat::checked_message(messages, i);
    Message msg;
    msg.label = chat::message_label(m, i);
    msg.role = m["role"].get<std::string>();
    read_task(m, i, msg);
    if (msg.role == "system" || msg.role == "developer") {
      msg.content = chat::content_text(m, i, "\n").value_or("");
      FERRY_CHECK(msg.role == "system" || !msg.content.empty(), "{}: needs non-empty content", msg.label);
      if (auto t = m.find("tools"); t != m.end()) msg.tools = tools_array(*t, msg.label + ": tools");
      if (auto rf = m.find("response_format"); rf != m.end() && !rf->empty()) msg.response_format = &*rf;
    } else if (msg.role == "user") {
      Block text{false, chat::content_text(m, i, "\n").value_or(""), {}};
      // A user message continues the previous user turn (e.g. text after tool results) unless that turn is a task.
      if (!out.empty() && out.back().role == "user" && out.back().task.empty()) {
        out.back().blocks.push_back(std::move(text));
        continue;
      }
      msg.blocks.push_back(std::move(text));
    } else if (msg.role == "tool") {
      Block result{true, chat::content_text(m, i, "\n\n").value_or(""),
                   chat::string_field(m, i, "tool_call_id").value_or("")};
      if (!out.empty() && out.back().role == "user") {
        out.back().blocks.push_back(std::move(result));
        continue;
      }
      msg.role = "user";
      msg.task.clear();
      msg.task_token.reset();
      msg.blocks.push_back(std::move(result));
    } else if (msg.role == "assistant") {
      msg.content = chat::content_text(m, i, "\n").value_or("");
      std::optional<std::string> reasoning = chat::string_field(m, i, "reasoning_content");
      if (!reasoning) reasoning = chat::string_field(m, i, "reasoning");
      msg.reasoning = reasoning.value_or("");
      msg.tool_calls = tool_calls_with_objects(m, i, msg.label);
      if (auto w = m.find("wo_eos"); w != m.end() && !w->is_null()) {
        FERRY_CHECK(w->is_boolean(), "{}: wo_eos must be true or false", msg.label);
        msg.wo_eos = w->get<bool>();
      }
    } else if (msg.role == "latest_reminder") {
      std::optional<std::string> content = chat::content_text(m, i, "\n");
      FERRY_CHECK(content, "{}: needs content", msg.label);
      msg.content = *content;
    } else {
      FERRY_THROW("{}: unknown role (V4 knows system, developer, user, assistant, tool, latest_reminder)", msg.label);
    }
    out.push_back(std::move(msg));
  }

  // The request's tools belong to the leading system message.
  if (const OrderedJson* t = tools_array(tools, "tools")) {
    if (out.empty() || out.front().role != "system") {
      Message system;
      system.label = "tools";
      system.role = "system";
      out.insert(out.begin(), std::move(system));
    }
    FERRY_CHECK(!out.front().tools, "tools given both in the request and on the first system message");
    out.front().tools = t;
  }
  return out;
}

// Tool results are shown in the order of the calls of the latest assistant turn that made calls (by id).
void sort_tool_results(std::vector<Message>& messages) {
  std::map<std::string, size_t> call_order;
  for (Message& m : messages) {
    if (m.role == "assistant" && !m.tool_calls.empty()) {
      call_order.clear();
      for (size_t i = 0; i < m.tool_calls.size(); ++i)
        if (!m.tool_calls[i].id.empty()) call_order[m.tool_calls[i].id] = i;
    } else if (m.role == "user" && !call_order.empty()) {
      std::vector<Block> results;
      for (const Block& b : m.blocks)
        if (b.tool_result) results.push_back(b);
      if (results.size() < 2) continue;
      auto order = [&](const Block& b) {
        auto it = call_order.find(b.tool_call_id);
        return it == call_order.end() ? size_t{0} : it->second;
      };
      std::stable_sort(results.begin(), results.end(),
                       [&](const Block& a, const Block& b) { return order(a) < order(b); });
      size_t next = 0;
      for (Block& b : m.blocks)
        if (b.tool_result) b = results[next++];
    }
  }
}

bool is_user_turn(const Message& m) { return m.role == "user" || m.role == "developer"; }

ptrdiff_t last_user_index(const std::vector<Message>& messages) {
  for (size_t i = messages.size(); i-- > 0;)
    if (is_user_turn(messages[i])) return static_cast<ptrdiff_t>(i);
  return -1;
}

// Thinking mode without tools: earlier assistant turns lose their reasoning, and developer messages before the
// last user turn are left out altogether (as DeepSeek's encoder does).
void drop_earlier_thinking(std::vector<Message>& messages) {
  const ptrdiff_t last_user = last_user_index(messages);
  std::vector<Message> kept;
  for (size_t i = 0; i < messages.size(); ++i) {
    Message& m = messages[i];
    if (static_cast<ptrdiff_t>(i) >= last_user || m.role != "developer") {
      if (static_cast<ptrdiff_t>(i) < last_user && m.role == "assistant") m.reasoning.clear();
      kept.push_back(std::move(m));
    }
  }
  messages = std::move(kept);
}

std::string render_tools(const OrderedJson& tools) {
  std::string out(kToolsPreamble);
  for (size_t i = 0; i < tools.size(); ++i) {
    if (i) out += '\n';
    out += chat::python_json(tools[i]["function"]);
  }
  out += kToolsPostamble;
  return out;
}

void append_tools_and_format(const Message& m, std::string& out) {
  if (m.tools) out += "\n\n" + render_tools(*m.tools);
  if (m.response_format) out += "\n\n" + std::string(kResponseFormatPreamble) + chat::python_json(*m.response_format);
}

std::string render_tool_calls(const std::vector<ToolCallOut>& calls) {
  std::string out(chat::kToolCallsSeparator);
  out += chat::kToolCallsStart;
  out += '\n';
  for (size_t c = 0; c < calls.size(); ++c) {
    if (c) out += '\n';
    out += chat::kInvokeOpen;
    out += calls[c].name + "\">\n";
    bool first = true;
    for (const auto& [key, value] : calls[c].arguments.items()) {
      if (!first) out += '\n';
      first = false;
      out += chat::kParameterOpen;
      out += key;
      out += chat::kParameterString;
      out += value.is_string() ? "true\">" + value.get<std::string>() : "false\">" + chat::python_json(value);
      out += chat::kParameterEnd;
    }
    out += '\n';
    out += chat::kInvokeEnd;
  }
  out += '\n';
  out += chat::kToolCallsEnd;
  return out;
}

std::string render_user_blocks(const std::vector<Block>& blocks) {
  std::string out;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (i) out += "\n\n";
    out += blocks[i].tool_result ? "<tool_result>" + blocks[i].text + "</tool_result>" : blocks[i].text;
  }
  return out;
}

class Renderer {
 public:
  Renderer(const std::vector<Message>& messages, const ChatEncodeOptions& options, bool drop_thinking)
      : messages_(messages),
        options_(options),
        thinking_(options.mode == ThinkingMode::Thinking),
        drop_thinking_(drop_thinking),
        last_user_(last_user_index(messages)) {}

  void render(size_t index, std::string& out) const {
    const Message& m = messages_[index];
    const auto i = static_cast<ptrdiff_t>(index);
    if (index == 0 && thinking_ && options_.max_reasoning_effort) out += kMaxEffortPreamble;

    if (m.role == "system") {
      out += m.content;
      append_tools_and_format(m, out);
    } else if (m.role == "developer") {
      out += kUserToken;
      out += m.content;
      append_tools_and_format(m, out);
    } else if (m.role == "user") {
      out += kUserToken;
      out += render_user_blocks(m.blocks);
    } else if (m.role == "latest_reminder") {
      out += kLatestReminderToken;
      out += m.content;
    } else {  // assistant
      const bool after_task = index > 0 && !messages_[index - 1].task.empty();
      if (thinking_ && !after_task && (!drop_thinking_ || i > last_user_)) {
        out += m.reasoning;
        out += kThinkEnd;
      }
      out += m.content;
      if (!m.tool_calls.empty()) out += render_tool_calls(m.tool_calls);
      if (!m.wo_eos) out += kEosToken;
    }

    // The assistant prefix follows a user turn only where an assistant turn (or a reminder) comes next, or at the
    // very end as the generation prompt.
    const bool last = index + 1 == messages_.size();
    if (!last && messages_[index + 1].role != "assistant" && messages_[index + 1].role != "latest_reminder") return;
    if (last && !options_.add_generation_prompt) return;
    if (m.task_token) {
      if (m.task != "action") {
        out += *m.task_token;
      } else {
        out += kAssistantToken;
        out += thinking_ ? kThinkStart : kThinkEnd;
        out += *m.task_token;
      }
    } else if (is_user_turn(m)) {
      out += kAssistantToken;
      out += thinking_ && (!drop_thinking_ || i >= last_user_) ? kThinkStart : kThinkEnd;
    }
  }

 private:
  const std::vector<Message>& messages_;
  const ChatEncodeOptions& options_;
  bool thinking_, drop_thinking_;
  ptrdiff_t last_user_;
};

}  // namespace

std::string encode_v4_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                           const ChatEncodeOptions& options) {
  std::vector<Message> msgs = read_messages(messages, tools);
  sort_tool_results(msgs);
  const bool any_tools = std::any_of(msgs.begin(), msgs.end(), [](const Message& m) { return m.tools; });
  const bool drop_thinking = options.drop_thinking && !any_tools;
  if (options.mode == ThinkingMode::Thinking && drop_thinking) drop_earlier_thinking(msgs);

  std::string out;
  if (options.add_bos) out += kBosToken;
  Renderer renderer(msgs, options, drop_thinking);
  for (size_t i = 0; i < msgs.size(); ++i) renderer.render(i, out);
  return out;
}

std::string encode_v4_chat(const nlohmann::json& messages, const nlohmann::json& tools,
                           const ChatEncodeOptions& options) {
  return encode_v4_chat(nlohmann::ordered_json(messages), nlohmann::ordered_json(tools), options);
}

}  // namespace ferry::runtime

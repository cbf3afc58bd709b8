#include "runtime/text/chat_message.h"

#include <fmt/format.h>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "planner/core/error.h"

namespace ferry::runtime::chat {
namespace {

// Python's repr of a float: the shortest digits that read back exactly, in positional notation for decimal
// exponents -4..15 (always with a fraction, "100.0") and in scientific notation ("1e+16", "1.5e-05") otherwise.
std::string python_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto sci = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string s(buf, sci.ptr);
  int exponent = std::atoi(s.c_str() + s.find('e') + 1);
  if (exponent < -4 || exponent >= 16) return s;
  auto fixed = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
  s.assign(buf, fixed.ptr);
  if (s.find('.') == std::string::npos) s += ".0";
  return s;
}

void write_string(std::string_view s, std::string& out) {
  // nlohmann escapes exactly what Python does without ensure_ascii: quote, backslash and control characters
  // (\b \f \n \r \t by name, the rest as lowercase \u00XX). Invalid UTF-8 becomes U+FFFD instead of throwing.
  out += OrderedJson(s).dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

void write_value(const OrderedJson& v, std::string& out) {
  switch (v.type()) {
    case OrderedJson::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : v.items()) {
        if (!first) out += ", ";
        first = false;
        write_string(key, out);
        out += ": ";
        write_value(item, out);
      }
      out += '}';
      break;
    }
    case OrderedJson::value_t::array: {
      out += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        write_value(v[i], out);
      }
      out += ']';
      break;
    }
    case OrderedJson::value_t::string: write_string(v.get_ref<const std::string&>(), out); break;
    case OrderedJson::value_t::number_float: out += python_float(v.get<double>()); break;
    default: out += v.dump(); break;  // integers, true/false, null: the same text in both
  }
}

}  // namespace

std::string python_json(const OrderedJson& value) {
  std::string out;
  write_value(value, out);
  return out;
}

std::string message_label(const OrderedJson& message, size_t index) {
  std::string label = fmt::format("message {}", index);
  if (message.is_object())
    if (auto it = message.find("role"); it != message.end() && it->is_string())
      label += " (" + it->get<std::string>() + ")";
  return label;
}

const OrderedJson& checked_message(const OrderedJson& messages, size_t index) {
  const OrderedJson& m = messages[index];
  FERRY_CHECK(m.is_object(), "{}: must be a JSON object, got {}", message_label(m, index), m.type_name());
  auto role = m.find("role");
  FERRY_CHECK(role != m.end(), "{}: has no role", message_label(m, index));
  FERRY_CHECK(role->is_string(), "{}: role must be a string, got {}", message_label(m, index), role->type_name());
  return m;
}

std::optional<std::string> string_field(const OrderedJson& message, size_t index, const char* key) {
  auto it = message.find(key);
  if (it == message.end() || it->is_null()) return std::nullopt;
  FERRY_CHECK(it->is_string(), "{}: {} must be a string, got {}", message_label(message, index), key, it->type_name());
  return it->get<std::string>();
}

std::optional<std::string> content_text(const OrderedJson& message, size_t index, std::string_view part_separator) {
  auto it = message.find("content");
  if (it == message.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  const std::string where = message_label(message, index);
  FERRY_CHECK(it->is_array(), "{}: content must be a string, null or an array of text parts, got {}", where,
              it->type_name());
  std::string text;
  for (size_t i = 0; i < it->size(); ++i) {
    const OrderedJson& part = (*it)[i];
    const std::string part_where = fmt::format("{}: content[{}]", where, i);
    FERRY_CHECK(part.is_object(), "{} must be an object", part_where);
    auto type = part.find("type");
    FERRY_CHECK(type != part.end() && type->is_string() && *type == "text",
                "{} is not a text part (only {{\"type\": \"text\"}} parts can be rendered)", part_where);
    auto t = part.find("text");
    FERRY_CHECK(t != part.end() && t->is_string(), "{}: text must be a string", part_where);
    if (i) text += part_separator;
    text += t->get<std::string>();
  }
  return text;
}

std::vector<ToolCallIn> tool_calls_of(const OrderedJson& message, size_t index) {
  std::vector<ToolCallIn> calls;
  auto it = message.find("tool_calls");
  if (it == message.end() || it->is_null()) return calls;
  const std::string where = message_label(message, index);
  FERRY_CHECK(it->is_array(), "{}: tool_calls must be an array, got {}", where, it->type_name());
  for (size_t i = 0; i < it->size(); ++i) {
    const OrderedJson& tc = (*it)[i];
    const std::string tc_where = fmt::format("{}: tool_calls[{}]", where, i);
    FERRY_CHECK(tc.is_object(), "{} must be an object", tc_where);
    ToolCallIn call;
    if (auto id = tc.find("id"); id != tc.end() && !id->is_null()) {
      FERRY_CHECK(id->is_string(), "{}: id must be a string", tc_where);
      call.id = id->get<std::string>();
    }
    call.type = "function";
    if (auto type = tc.find("type"); type != tc.end() && !type->is_null()) {
      FERRY_CHECK(type->is_string(), "{}: type must be a string", tc_where);
      call.type = type->get<std::string>();
    }
    auto fn = tc.find("function");
    FERRY_CHECK(fn != tc.end() && fn->is_object(), "{} has no function object", tc_where);
    auto name = fn->find("name");
    FERRY_CHECK(name != fn->end() && name->is_string() && !name->get_ref<const std::string&>().empty(),
                "{}: tool call without a name", tc_where);
    call.name = name->get<std::string>();
    auto args = fn->find("arguments");
    if (args == fn->end() || args->is_null()) {
      call.arguments_text = "{}";
    } else if (args->is_string()) {
      call.arguments_text = args->get<std::string>();
    } else {
      FERRY_CHECK(args->is_object(), "{}: arguments must be a JSON text or an object, got {}", tc_where,
                  args->type_name());
      call.arguments_text = python_json(*args);
      call.arguments_object = &*args;
    }
    calls.push_back(std::move(call));
  }
  return calls;
}

}  // namespace ferry::runtime::chat

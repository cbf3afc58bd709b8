#include "launch/server/slot_actions.h"

#include <httplib.h>

#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "launch/server/api_error.h"

namespace ferry::launch::server {
namespace {

using json = nlohmann::ordered_json;

// A file name of the save directory: no directory part, nothing hidden, nothing a shell or a path would read
// differently.
std::string file_name_of(const httplib::Request& req) {
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::exception&) {
    throw invalid_request("the body is not JSON: give {\"filename\": NAME}");
  }
  if (!body.is_object() || !body.contains("filename") || !body["filename"].is_string())
    throw invalid_request("give {\"filename\": NAME}, a file name inside --slot-save-path", "filename");
  const std::string name = body["filename"];
  const bool plain = !name.empty() && name.size() <= 255 && name[0] != '.' &&
                     name.find_first_of("/\\") == std::string::npos && name.find('\0') == std::string::npos;
  if (!plain)
    throw invalid_request("filename '" + name + "' is not a plain file name (no '/', not starting with '.')",
                          "filename");
  return name;
}

int slot_id_of(const httplib::Request& req) {
  const std::string text = req.matches[1];
  if (text.size() > 6) throw ApiError(404, "no slot " + text, "not_found_error");
  return std::stoi(text);
}

}  // namespace

void answer_slot_action(Engine& engine, const std::string& save_dir, const httplib::Request& req,
                        httplib::Response& res) {
  const int id = slot_id_of(req);
  const std::string action = req.get_param_value("action");
  if (action == "erase") {
    const int64_t n = engine.erase_slot(id);
    res.set_content(json{{"id_slot", id}, {"n_erased", n}}.dump(), "application/json");
    return;
  }
  if (action != "save" && action != "restore")
    throw invalid_request("action must be save, restore or erase, not '" + action + "'", "action");
  if (save_dir.empty())
    throw ApiError(501, "slots are saved and restored only with --slot-save-path DIR", "not_supported_error");
  const std::string name = file_name_of(req);
  const std::string file = (std::filesystem::path(save_dir) / name).string();
  const auto start = std::chrono::steady_clock::now();
  const bool save = action == "save";
  const Engine::SlotFile done = save ? engine.save_slot(id, file) : engine.restore_slot(id, file);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  json out{{"id_slot", id}, {"filename", name}};
  out[save ? "n_saved" : "n_restored"] = done.tokens;
  out[save ? "n_written" : "n_read"] = done.bytes;
  out["timings"] = {{save ? "save_ms" : "restore_ms", ms}};
  res.set_content(out.dump(), "application/json");
}

Engine::SlotFile Engine::save_slot(int, const std::string&) {
  throw ApiError(501, "this engine keeps no slots", "not_supported_error");
}
Engine::SlotFile Engine::restore_slot(int, const std::string&) {
  throw ApiError(501, "this engine keeps no slots", "not_supported_error");
}
int64_t Engine::erase_slot(int) { throw ApiError(501, "this engine keeps no slots", "not_supported_error"); }

}  // namespace ferry::launch::server

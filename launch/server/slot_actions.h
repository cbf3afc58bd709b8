// POST /slots/{id}?action=save|restore|erase, as llama-server answers it: save and restore take
// {"filename": NAME}, a plain file name inside the server's --slot-save-path directory, and answer
// {"id_slot", "filename", "n_saved"/"n_restored", "n_written"/"n_read", "timings": {"save_ms"/"restore_ms"}};
// erase answers {"id_slot", "n_erased"}. The KV session file is runtime/model/session_file.h's.
#pragma once

#include <string>

#include "launch/server/engine.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace ferry::launch::server {

// `save_dir` empty: save and restore are refused (501), erase works. Throws ApiError for a bad request.
void answer_slot_action(Engine& engine, const std::string& save_dir, const httplib::Request& req,
                        httplib::Response& res);

}  // namespace ferry::launch::server

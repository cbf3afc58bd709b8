// Whole files in and out: a text file read at once (configs, plans), and a file written through a temporary
// name and renamed into place, so that a failure never leaves a half-written file where a good one was (logits,
// checkpoints, plans).
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>
#include <string>

namespace ferry::core {

// Throws ferry::Error "cannot read PATH" when the file cannot be opened.
std::string read_text_file(const std::filesystem::path& path);

// Writes `path` through `write` into PATH.tmp, then renames it over `path`. Throws ferry::Error naming `path`
// when it cannot be written (a full disk included) or renamed.
void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write);

}  // namespace ferry::core

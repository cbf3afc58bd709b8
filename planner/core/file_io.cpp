#include "planner/core/file_io.h"

#include <fstream>
#include <sstream>

#include "planner/core/error.h"

namespace ferry::core {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) FERRY_THROW("cannot read {}", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) FERRY_THROW("cannot write {}", path.string());
    write(out);
    out.flush();
    if (!out) FERRY_THROW("cannot write {} (disk full?)", path.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) FERRY_THROW("cannot write {}: {}", path.string(), ec.message());
}

}  // namespace ferry::core

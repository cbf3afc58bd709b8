#include "runtime/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "planner/core/error.h"

namespace ferry::runtime {

namespace fs = std::filesystem;

MappedFile::MappedFile(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) FERRY_THROW("cannot open {}: {}", file.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    FERRY_THROW("cannot stat {}", file.string());
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data_ == MAP_FAILED) {
      data_ = nullptr;
      ::close(fd);
      FERRY_THROW("cannot map {}: {}", file.string(), std::strerror(errno));
    }
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

Checkpoint Checkpoint::open(const fs::path& path) {
  Checkpoint c;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    c.dir_ = path;
    c.headers_ = core::read_checkpoint_headers(path);
  } else if (fs::is_regular_file(path, ec)) {
    c.dir_ = path.parent_path();
    core::SafetensorsHeader h = core::read_safetensors_header(path);
    for (size_t i = 0; i < h.tensors.size(); ++i)
      c.headers_.by_name.emplace(h.tensors[i].name, std::make_pair(size_t{0}, i));
    c.headers_.shards.push_back(std::move(h));
  } else {
    FERRY_THROW("{} is neither a checkpoint directory nor a .safetensors file", path.string());
  }
  c.maps_.resize(c.headers_.shards.size());
  return c;
}

const core::SafetensorsTensor& Checkpoint::info(const std::string& name) const {
  const auto* t = headers_.find(name);
  if (!t) FERRY_THROW("checkpoint has no tensor '{}'", name);
  return *t;
}

std::span<const std::byte> Checkpoint::bytes(const std::string& name) const {
  auto it = headers_.by_name.find(name);
  if (it == headers_.by_name.end()) FERRY_THROW("checkpoint has no tensor '{}'", name);
  const auto [shard, index] = it->second;
  const auto& h = headers_.shards[shard];
  auto& map = maps_[shard];
  if (!map) map = std::make_unique<MappedFile>(dir_ / h.file);
  const auto file = map->bytes();
  const auto& t = h.tensors[index];
  // The header was validated against the file size when it was read; a file that shrank since is caught here.
  if (static_cast<int64_t>(file.size()) < h.data_offset + t.end)
    FERRY_THROW("{} is shorter than its header says (changed on disk?)", h.file);
  return file.subspan(static_cast<size_t>(h.data_offset + t.begin), static_cast<size_t>(t.bytes()));
}

}  // namespace ferry::runtime

// The file handling under session files (session_file.h): descriptors, buffered writes and reads with a running
// CRC-32, the temporary file a save writes and renames, and the clean-up of those a killed save left.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "planner/core/error.h"

namespace ferry::runtime::session_io {

inline constexpr size_t kIoChunk = size_t{4} << 20;

std::string errno_text();
// zlib's CRC-32 continued over n bytes at p (nothing for n = 0, whatever p is).
uint32_t crc_of(uint32_t crc, const void* p, size_t n);

// A file descriptor closed on every path.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Buffered writes with a running CRC; large parts go straight to the file.
class Writer {
 public:
  Writer(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}
  void put(const void* p, size_t n) {
    crc_ = crc_of(crc_, p, n);
    if (buf_.size() + n > kIoChunk) flush();
    if (n >= kIoChunk)
      write_all(static_cast<const char*>(p), n);
    else
      buf_.append(static_cast<const char*>(p), n);
  }
  void flush() {
    write_all(buf_.data(), buf_.size());
    buf_.clear();
  }
  uint32_t crc() const { return crc_; }

 private:
  void write_all(const char* p, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      FERRY_CHECK(w > 0, "{}: cannot write ({})", name_, errno_text());
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  int fd_;
  std::string name_, buf_;
  uint32_t crc_ = 0;
};

// Reads the file from an offset on, with a running CRC; a null destination reads and checks without keeping.
class Reader {
 public:
  Reader(int fd, int64_t offset, uint32_t crc, std::string name)
      : fd_(fd), at_(offset), crc_(crc), name_(std::move(name)) {}
  void get(void* dst, size_t n) {
    while (n > 0) {
      char* to = static_cast<char*>(dst);
      size_t m = n;
      if (!dst) {
        scratch_.resize(std::min(n, kIoChunk));
        to = scratch_.data();
        m = scratch_.size();
      }
      const ssize_t r = ::pread(fd_, to, m, at_);
      if (r < 0 && errno == EINTR) continue;
      FERRY_CHECK(r >= 0, "{}: cannot read ({})", name_, errno_text());
      FERRY_CHECK(r > 0, "{}: truncated (it ended at byte {} while being read)", name_, at_);
      crc_ = crc_of(crc_, to, static_cast<size_t>(r));
      at_ += r;
      n -= static_cast<size_t>(r);
      if (dst) dst = to + r;
    }
  }
  template <class T>
  T next() {
    T v{};
    get(&v, sizeof v);
    return v;
  }
  uint32_t crc() const { return crc_; }

 private:
  int fd_;
  int64_t at_;
  uint32_t crc_;
  std::string name_;
  std::vector<char> scratch_;
};

// The test hook of save_session (session_file.h): a pause mid-write for a kill -9.
void stall_if_asked(const std::string& tmp);

// Opens a saved session for reading: a regular file (its size in `size`), or a one-line error naming what it is.
int open_session_file(const std::filesystem::path& path, int64_t& size);

// The temporary file a save of `path` writes (session_temp_path), created once the stale ones of killed saves are
// removed; removed again unless commit() renamed it over `path`.
class TempFile {
 public:
  explicit TempFile(const std::filesystem::path& path);
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_.fd; }
  const std::string& name() const { return name_; }
  // Synced, closed, renamed over the path, the directory synced.
  void commit();

 private:
  std::filesystem::path path_, tmp_;
  std::string name_;
  Fd fd_{-1};
  bool committed_ = false;
};

}  // namespace ferry::runtime::session_io

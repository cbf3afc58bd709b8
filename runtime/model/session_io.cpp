#include "runtime/model/session_io.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "planner/core/error.h"
#include "runtime/model/session_file.h"

namespace ferry::runtime {
namespace session_io {

std::string errno_text() { return std::strerror(errno); }

// zlib returns the initial value for a null buffer, which an empty part's data() may be.
uint32_t crc_of(uint32_t crc, const void* p, size_t n) {
  if (n == 0) return crc;
  return static_cast<uint32_t>(crc32_z(crc, static_cast<const Bytef*>(p), n));
}

namespace {

std::filesystem::path directory_of(const std::filesystem::path& path) {
  return path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
}

// This host's name as a file name part ('/' would make it a path).
std::string host_name() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  std::string h = name;
  std::replace(h.begin(), h.end(), '/', '_');
  return h;
}

// The pid of a temporary file's "<pid>.<serial>" (session_temp_path); 0 when it is not that.
int temp_owner(std::string_view pid_serial) {
  const size_t dot = pid_serial.find('.');
  if (dot == std::string_view::npos) return 0;
  const char* end = pid_serial.data() + pid_serial.size();
  int pid = 0;
  uint64_t serial = 0;
  const auto p = std::from_chars(pid_serial.data(), pid_serial.data() + dot, pid);
  const auto s = std::from_chars(pid_serial.data() + dot + 1, end, serial);
  const bool whole = p.ec == std::errc() && p.ptr == pid_serial.data() + dot && s.ec == std::errc() && s.ptr == end;
  return whole && pid > 0 ? pid : 0;
}

// Removes the temporary files that saves of `path` killed mid-write left: session_temp_path's names of this host
// whose process no longer exists. A live process's, whoever it runs as (kill answers EPERM, not ESRCH), is never
// touched, so two processes may save the same name at once (the last rename wins, each file whole); another
// host's (a shared directory) is left alone, since its process cannot be seen from here. A pid reused since
// keeps its file until that process ends too. Best effort: a listing or removal that fails changes nothing else.
void remove_stale_temps(const std::filesystem::path& path) {
  const std::string prefix = path.filename().string() + "." + host_name() + ".", suffix = ".tmp";
  std::error_code ec;
  for (std::filesystem::directory_iterator it(directory_of(path), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix)) continue;
    const int pid = temp_owner({name.data() + prefix.size(), name.size() - prefix.size() - suffix.size()});
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) ::unlink(it->path().c_str());
  }
}

// Syncs the directory so that the rename itself survives a power loss.
void sync_directory(const std::filesystem::path& dir, const std::string& file) {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  FERRY_CHECK(d.fd >= 0 && ::fsync(d.fd) == 0, "{}: saved, but syncing its directory failed ({})", file, errno_text());
}

}  // namespace

// The test hook of save_session (session_file.h): a pause mid-write for a kill -9.
void stall_if_asked(const std::string& tmp) {
  const char* s = std::getenv("FERRY_TEST_SESSION_SAVE_STALL_S");
  if (!s) return;
  const int seconds = std::atoi(s);
  std::fprintf(stderr, "session: save stalled for %d s with %s partly written (FERRY_TEST_SESSION_SAVE_STALL_S)\n",
               seconds, tmp.c_str());
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
}

// Opens a saved session for reading: a regular file, or a one-line error naming what it is instead.
int open_session_file(const std::filesystem::path& path, int64_t& size) {
  const std::string file = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FERRY_CHECK(fd >= 0, "{}: cannot open the session file ({})", file, errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const bool dir = S_ISDIR(st.st_mode);
    ::close(fd);
    FERRY_THROW("{}: {}, not a session file", file, dir ? "a directory" : "not a regular file");
  }
  size = static_cast<int64_t>(st.st_size);
  return fd;
}

TempFile::TempFile(const std::filesystem::path& path) : path_(path), name_(path.string()) {
  std::error_code ec;
  FERRY_CHECK(!std::filesystem::is_directory(path, ec), "{}: a directory; give a file name to save the session to",
              name_);
  remove_stale_temps(path);
  // Unique per process and call: two slots of a server may save at once.
  static std::atomic<int64_t> serial{0};
  tmp_ = session_temp_path(path, ::getpid(), serial++);
  fd_.fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  FERRY_CHECK(fd_.fd >= 0, "{}: cannot create {} ({})", name_, tmp_.string(), errno_text());
  name_ = tmp_.string();
}

TempFile::~TempFile() {
  if (!committed_) ::unlink(tmp_.c_str());
}

void TempFile::commit() {
  const std::string file = path_.string(), tmp = tmp_.string();
  FERRY_CHECK(::fsync(fd_.fd) == 0, "{}: cannot sync {} ({})", file, tmp, errno_text());
  const int closed = ::close(fd_.fd);
  fd_.fd = -1;
  FERRY_CHECK(closed == 0, "{}: cannot close {} ({})", file, tmp, errno_text());
  FERRY_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, "{}: cannot replace it with {} ({})", file, tmp,
              errno_text());
  committed_ = true;
  sync_directory(directory_of(path_), file);
}

}  // namespace session_io

std::filesystem::path session_temp_path(const std::filesystem::path& path, int64_t pid, int64_t serial) {
  std::filesystem::path tmp = path;
  tmp += fmt::format(".{}.{}.{}.tmp", session_io::host_name(), pid, serial);
  return tmp;
}

}  // namespace ferry::runtime

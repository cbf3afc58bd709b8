// Errors for every ferry library: one exception type and the CHECK macros DESIGN.md §6 names.
// Libraries throw; launch/ catches, prints one line and exits non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace ferry {

// `what()` is the one-line message for the user; `where()` is file:line for debugging.
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string where = {})
      : std::runtime_error(std::move(message)), where_(std::move(where)) {}
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

namespace detail {
inline std::string source_location(const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line);
}
}  // namespace detail

}  // namespace ferry

#define FERRY_THROW(msg) throw ::ferry::Error((msg), ::ferry::detail::source_location(__FILE__, __LINE__))

// FERRY_CHECK(cond, msg): msg is only evaluated when cond is false.
#define FERRY_CHECK(cond, msg)     \
  do {                             \
    if (!(cond)) FERRY_THROW(msg); \
  } while (0)

// The vendor checks expand only inside translation units that include the vendor's header.
#define CUDA_CHECK(expr)                                                                                  \
  do {                                                                                                    \
    cudaError_t ferry_cuda_status_ = (expr);                                                              \
    if (ferry_cuda_status_ != cudaSuccess)                                                                \
      FERRY_THROW(std::string("CUDA error in ") + #expr + ": " + cudaGetErrorString(ferry_cuda_status_)); \
  } while (0)

#define NCCL_CHECK(expr)                                                                                  \
  do {                                                                                                    \
    ncclResult_t ferry_nccl_status_ = (expr);                                                             \
    if (ferry_nccl_status_ != ncclSuccess)                                                                \
      FERRY_THROW(std::string("NCCL error in ") + #expr + ": " + ncclGetErrorString(ferry_nccl_status_)); \
  } while (0)

#define MPI_CHECK(expr)                                                                                       \
  do {                                                                                                        \
    int ferry_mpi_status_ = (expr);                                                                           \
    if (ferry_mpi_status_ != MPI_SUCCESS) {                                                                   \
      char ferry_mpi_msg_[MPI_MAX_ERROR_STRING];                                                              \
      int ferry_mpi_len_ = 0;                                                                                 \
      MPI_Error_string(ferry_mpi_status_, ferry_mpi_msg_, &ferry_mpi_len_);                                   \
      FERRY_THROW(std::string("MPI error in ") + #expr + ": " + std::string(ferry_mpi_msg_, ferry_mpi_len_)); \
    }                                                                                                         \
  } while (0)

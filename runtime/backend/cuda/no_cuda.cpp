// The CUDA entry points in a build without CUDA: each throws ferry::Error saying so, so that code naming them
// links in both builds and fails with one clear line (as probe_gpus reports no GPU).
#include <memory>
#include <string>

#include "planner/core/error.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/cuda/pinned_memory.h"

namespace ferry::runtime::cuda {

namespace {
[[noreturn]] void built_without_cuda(const std::string& who) { FERRY_THROW("{}: ferry was built without CUDA", who); }
}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) { built_without_cuda("cuda:" + std::to_string(device)); }

double device_copy_bandwidth(int device, int64_t, int) { built_without_cuda("cuda:" + std::to_string(device)); }

std::string pci_bus_id(int device) { built_without_cuda("cuda:" + std::to_string(device)); }

PinnedBuffer::PinnedBuffer(int64_t, HostCaching) { built_without_cuda("pinned host memory"); }

HostRegistration::HostRegistration(const void*, int64_t, HostAccess) { built_without_cuda("pinned host memory"); }

// Without CUDA no buffer or registration ever holds memory, so there is nothing to give back.
void PinnedBuffer::FreeHost::operator()(void*) const {}
void HostRegistration::Unregister::operator()(const void*) const {}

}  // namespace ferry::runtime::cuda

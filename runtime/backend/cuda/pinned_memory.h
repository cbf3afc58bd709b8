// Page-locked host memory, the source the copy engine reads without staging: copies from it run at the link's
// speed and overlap with the CPU, while pageable memory is first copied through a driver buffer (roughly half
// the bandwidth, ../shared/spec/transport.md §5). Two owners, both move-only RAII (the memory is given back
// when the owner is destroyed or reset):
//   PinnedBuffer      new memory from cudaHostAlloc (staging buffers, the host side of an expert cache);
//   HostRegistration  pins a range that exists already (cudaHostRegister), e.g. mmapped expert weights.
// Both are portable (pinned for every device's context). No CUDA type appears here; without CUDA, creating
// either throws ferry::Error saying so.
#pragma once

#include <cstdint>
#include <memory>

namespace ferry::runtime::cuda {

enum class HostCaching {
  WriteBack,      // ordinary cached memory: the CPU reads and writes it at full speed
  WriteCombined,  // uncached, write-combined: can cross PCIe faster, but CPU reads are very slow; for staging
                  // buffers the CPU only writes
};

class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  // Throws ferry::Error (with the size and CUDA's message) when the memory cannot be pinned; 0 bytes holds none.
  explicit PinnedBuffer(int64_t bytes, HostCaching caching = HostCaching::WriteBack);

  // Copies still reading the buffer must have completed: cudaFreeHost does not wait for them.
  void reset() { data_.reset(); }
  void* data() const { return data_.get(); }
  int64_t bytes() const { return data_ ? bytes_ : 0; }

 private:
  struct FreeHost {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, FreeHost> data_;
  int64_t bytes_ = 0;
};

enum class HostAccess {
  ReadWrite,  // the range is writable (the driver pins it for writing)
  ReadOnly,   // the device only reads it: needed for read-only mappings (PROT_READ mmaps of a checkpoint);
              // not every system supports it (cudaDevAttrHostRegisterReadOnlySupported)
};

class HostRegistration {
 public:
  HostRegistration() = default;
  // Pins [data, data + bytes) in place until reset; the range must stay mapped that long. Throws ferry::Error
  // with CUDA's message when it cannot (already registered, not mapped, no such support); 0 bytes pins none.
  HostRegistration(const void* data, int64_t bytes, HostAccess access = HostAccess::ReadWrite);

  // As for PinnedBuffer, copies reading the range must have completed.
  void reset() { data_.reset(); }
  const void* data() const { return data_.get(); }
  int64_t bytes() const { return data_ ? bytes_ : 0; }

 private:
  struct Unregister {
    void operator()(const void* p) const;
  };
  std::unique_ptr<const void, Unregister> data_;
  int64_t bytes_ = 0;
};

}  // namespace ferry::runtime::cuda

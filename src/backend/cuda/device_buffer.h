// DeviceBuffer: an owned, typed block of GPU memory (cudaMalloc/cudaFree), movable and
// not copyable. The CUDA backend keeps every device allocation in one of these so that
// an exception between allocation and use never leaks GPU memory.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_check.h"

namespace dsq::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count > 0) DSQ_CUDA_CHECK(cudaMalloc(&ptr_, count * sizeof(T)));
  }
  // A device copy of host data, complete on return. (cudaMemcpy from pageable memory may
  // return before its DMA has landed, and kernels on a non-blocking stream do not wait
  // for the legacy stream: without the synchronisation a weight's first use could read
  // it half-copied — seen as rare wrong results on an H100.)
  static DeviceBuffer from_host(const T* data, size_t count) {
    DeviceBuffer b(count);
    if (count > 0) {
      DSQ_CUDA_CHECK(cudaMemcpy(b.ptr_, data, count * sizeof(T), cudaMemcpyHostToDevice));
      DSQ_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
    }
    return b;
  }
  static DeviceBuffer from_host(const std::vector<T>& v) { return from_host(v.data(), v.size()); }

  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  std::vector<T> to_host() const {
    std::vector<T> out(count_);
    if (count_ > 0) DSQ_CUDA_CHECK(cudaMemcpy(out.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace dsq::cuda

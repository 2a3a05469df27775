// CudaOps: construction, device memory, resident parameters and scratch (cuda_ops.h).
// All copies run on the context's stream; to_host() waits for it.
#include "backend/cuda/cuda_ops.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace dsq::cuda {

namespace {

// A tensor viewing a fresh zero-filled device allocation that frees itself with the
// last copy of the tensor.
Tensor device_tensor(DType dtype, Shape shape, cudaStream_t stream) {
  const size_t bytes = dtype_bytes(dtype, shape_numel(shape));
  void* ptr = nullptr;
  if (bytes > 0) {
    DSQ_CUDA_CHECK(cudaMalloc(&ptr, bytes));
    const cudaError_t err = cudaMemsetAsync(ptr, 0, bytes, stream);
    if (err != cudaSuccess) {
      cudaFree(ptr);
      DSQ_CUDA_CHECK(err);
    }
  }
  std::shared_ptr<const void> owner(ptr, [](const void* p) { cudaFree(const_cast<void*>(p)); });
  return Tensor::writable_view(dtype, std::move(shape), ptr, std::move(owner), Device::CUDA);
}

}  // namespace

namespace {
constexpr int kSlotsPerLane = 100;
}  // namespace

CudaOps::CudaOps(Precision precision) : precision_(precision) {
  DSQ_CUDA_CHECK(cudaEventCreateWithFlags(&side_start_, cudaEventDisableTiming));
  DSQ_CUDA_CHECK(cudaEventCreateWithFlags(&side_done_, cudaEventDisableTiming));
}

CudaOps::~CudaOps() {
  cudaEventDestroy(side_start_);
  cudaEventDestroy(side_done_);
}

void CudaOps::start_side_work() {
  DSQ_CHECK(lane_ == 0, "start_side_work: side work is already open");
  DSQ_CUDA_CHECK(cudaEventRecord(side_start_, lanes_[0].stream()));
  DSQ_CUDA_CHECK(cudaStreamWaitEvent(lanes_[1].stream(), side_start_, 0));
  lane_ = 1;
}

void CudaOps::end_side_work() {
  DSQ_CHECK(lane_ == 1, "end_side_work: no side work is open");
  DSQ_CUDA_CHECK(cudaEventRecord(side_done_, lanes_[1].stream()));
  lane_ = 0;
  side_unjoined_ = true;
}

void CudaOps::wait_side_work() {
  DSQ_CHECK(lane_ == 0, "wait_side_work: the side work has not ended");
  if (!side_unjoined_) return;
  DSQ_CUDA_CHECK(cudaStreamWaitEvent(lanes_[0].stream(), side_done_, 0));
  side_unjoined_ = false;
}

void CudaOps::synchronize() {
  for (const GpuContext& lane : lanes_) lane.synchronize();
}

Tensor CudaOps::alloc(DType dtype, Shape shape) { return device_tensor(dtype, std::move(shape), ctx().stream()); }

Tensor CudaOps::upload(const Tensor& host) {
  DSQ_CHECK(host.device() == Device::CPU, "upload: the tensor is already on the GPU");
  Tensor t = alloc(host.dtype(), host.shape());
  if (host.nbytes() > 0)
    DSQ_CUDA_CHECK(cudaMemcpyAsync(t.mutable_bytes(), host.bytes(), host.nbytes(), cudaMemcpyHostToDevice,
                                   ctx().stream()));
  // The host tensor may die right after the call: finish the copy first.
  ctx().synchronize();
  return t;
}

Tensor CudaOps::to_host(const Tensor& t) {
  DSQ_CHECK(t.device() == Device::CUDA, "to_host: the tensor is not on the GPU");
  Tensor h = Tensor::zeros(t.dtype(), t.shape());
  if (t.nbytes() > 0)
    DSQ_CUDA_CHECK(cudaMemcpyAsync(h.mutable_bytes(), t.bytes(), t.nbytes(), cudaMemcpyDeviceToHost,
                                   ctx().stream()));
  ctx().synchronize();
  return h;
}

void CudaOps::upload_into(void* dst, const void* host, size_t bytes) {
  // From pageable memory the call returns once the bytes are staged: the caller may
  // reuse them, and the stream orders the copy before later kernels.
  if (bytes > 0) DSQ_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, ctx().stream()));
}

void CudaOps::grow_rows(Tensor& t, int64_t rows, int64_t width) {
  const int64_t have = t.defined() ? t.dim(0) : 0;
  if (have >= rows) return;
  const int64_t capacity = std::max(rows, 2 * have);
  Tensor grown = alloc(DType::F32, {capacity, width});
  if (have > 0)
    DSQ_CUDA_CHECK(cudaMemcpyAsync(grown.mutable_bytes(), t.bytes(), t.nbytes(), cudaMemcpyDeviceToDevice,
                                   ctx().stream()));
  t = std::move(grown);
}

namespace {

// A device copy of host values, queued on the ops' stream (so every later op on the
// stream sees it) and waited for (so the host side may change afterwards).
template <typename T>
DeviceBuffer<T> stream_copy(const T* data, size_t count, const GpuContext& ctx) {
  DeviceBuffer<T> b(count);
  if (count > 0) {
    DSQ_CUDA_CHECK(cudaMemcpyAsync(b.get(), data, count * sizeof(T), cudaMemcpyHostToDevice, ctx.stream()));
    ctx.synchronize();
  }
  return b;
}

}  // namespace

const float* CudaOps::resident(const std::vector<float>& host) {
  auto it = float_params_.find(host.data());
  if (it == float_params_.end() || it->second.size() != host.size())
    it = float_params_.insert_or_assign(host.data(), stream_copy(host.data(), host.size(), ctx())).first;
  return it->second.get();
}

const int64_t* CudaOps::resident(const std::vector<int64_t>& host) {
  auto it = int_params_.find(host.data());
  if (it == int_params_.end() || it->second.size() != host.size())
    it = int_params_.insert_or_assign(host.data(), stream_copy(host.data(), host.size(), ctx())).first;
  return it->second.get();
}

const void* CudaOps::resident_bytes(const Tensor& host) {
  DSQ_CHECK(host.device() == Device::CPU, "resident_bytes: the tensor is already on the GPU");
  auto it = byte_params_.find(host.bytes());
  if (it == byte_params_.end() || it->second.size() != host.nbytes())
    it = byte_params_
             .insert_or_assign(host.bytes(), stream_copy(reinterpret_cast<const unsigned char*>(host.bytes()),
                                                         host.nbytes(), ctx()))
             .first;
  return it->second.get();
}

const float* CudaOps::rope_table(const cpu::RopeFrequencies& table) { return resident(table.freqs); }

void CudaOps::copy(float* dst, const float* src, int64_t n) {
  if (n > 0)
    DSQ_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, ctx().stream()));
}

void* CudaOps::scratch(int slot, size_t bytes) {
  DSQ_CHECK(slot >= 0 && slot < kSlotsPerLane, "scratch: slot out of range");
  DeviceBuffer<unsigned char>& b = scratch_[lane_ * kSlotsPerLane + slot];
  if (b.size() < bytes) {
    ctx().synchronize();  // the old buffer may still be in use by this lane's queued work
    b = DeviceBuffer<unsigned char>(std::max(bytes, 2 * b.size()));
    ++scratch_epoch_;
  }
  return b.get();
}

void* CudaOps::zeroed_scratch(int slot, size_t bytes) {
  const uint64_t epoch = scratch_epoch_;
  void* p = scratch(slot, bytes);
  if (scratch_epoch_ != epoch)
    DSQ_CUDA_CHECK(cudaMemsetAsync(p, 0, scratch_[lane_ * kSlotsPerLane + slot].size(), ctx().stream()));
  return p;
}

}  // namespace dsq::cuda

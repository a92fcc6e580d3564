// upfirdn2d: zero-insertion upsampling, zero padding / cropping, 2D FIR correlation, decimation.
//
// For output pixel (oy, ox) and taps (i, j) of the 2D filter w [fh, fw] (already flipped and
// scaled by the caller, so this is a plain correlation):
//   y[oy, ox] = sum_{i,j} xu[oy*downy + i - py0, ox*downx + j - px0] * w[i, j]
// where xu[u, v] = x[u/upy, v/upx] if upy | u, upx | v and inside the image, else 0.
// Only taps with (oy*downy + i - py0) divisible by upy touch a real sample, so each output walks
// the filter in steps of up starting at the first such tap.
//
// This file checks the arguments, allocates y and hands contiguous inputs to upfirdn2d_nchw.cu,
// channels-last ones to upfirdn2d_nhwc.cu.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/empty.h>

namespace lgfa {

void upfirdn2d_nchw_cuda(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, int64_t upx, int64_t upy,
                         int64_t downx, int64_t downy, int64_t px0, int64_t py0);
void upfirdn2d_nhwc_cuda(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, int64_t upx, int64_t upy,
                         int64_t downx, int64_t downy, int64_t px0, int64_t py0);

at::Tensor upfirdn2d_cuda(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx,
                             int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4D CUDA tensor");
  // A channels-last x stays channels-last: upfirdn2d_nhwc.cu reads it in place, y has its layout.
  const bool nhwc = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
                    x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || nhwc, "upfirdn2d: x must be contiguous or channels-last");
  TORCH_CHECK(f.is_cuda() && f.device() == x.device() && f.dim() == 2 && f.is_contiguous(),
              "upfirdn2d: f must be a contiguous 2D filter on x's device");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: factors must be >= 1");
  const auto opmath = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(f.scalar_type() == opmath, "upfirdn2d: f must be ", opmath, " for x of ", x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t fh = f.size(0), fw = f.size(1);
  const int64_t OH = (H * upy + py0 + py1 - fh) / downy + 1;
  const int64_t OW = (W * upx + px0 + px1 - fw) / downx + 1;
  TORCH_CHECK(H * upy + py0 + py1 >= fh && W * upx + px0 + px1 >= fw,
              "upfirdn2d: padded input is smaller than the filter");
  TORCH_CHECK(H * upy + std::abs(py0) + std::abs(py1) + fh < (1LL << 30) &&
                  W * upx + std::abs(px0) + std::abs(px1) + fw < (1LL << 30),
              "upfirdn2d: spatial size too large for the CUDA kernel");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(
      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  if (nhwc) {
    upfirdn2d_nhwc_cuda(x, f, y, upx, upy, downx, downy, px0, py0);
    return y;
  }
  upfirdn2d_nchw_cuda(x, f, y, upx, upy, downx, downy, px0, py0);
  return y;
}

}  // namespace lgfa

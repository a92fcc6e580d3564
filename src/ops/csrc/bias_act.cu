// Fused bias + activation + gain + clamp, and its first/second derivatives.
//
// For z = x + b[c] (c = index along `dim`), v = act(z), the kernel writes
//   order 0: clamp(v * gain, -clamp, clamp)                      (no clamp if clamp < 0)
//   order 1: g * act'(z)  * gain * m,   m = [|v * gain| <= clamp]  (m = 1 if clamp < 0)
//   order 2: g * act''(z) * gain * m
// All arithmetic is done in the "op-math" type (float for half/bfloat16/float, double for double).
//
// Forward-only epilogue variant (bias_act_epilogue_cuda, used by the generator's modulated conv
// under no_grad): z = x * s[n, c] + a[n?, c?, j] + b[c] for x [N, C, *spatial], so the
// demodulation scale and the noise are applied in the same pass over x as the bias and activation
// (a separate addcmul would read and write the largest activations once more).
//
// A channels-last 4-D x with the bias along dim 1 goes to bias_act_nhwc.cu (same maths, layout
// kept), any other x to bias_act_nchw.cu. This file checks the arguments and picks between them.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "bias_act.cuh"

namespace lgfa {
namespace {

using namespace bias_act_detail;  // the activation ids kLinear .. kSwish

// The messages of the checks below are literals on purpose: with torch 2.11 (cu130), a
// TORCH_CHECK message that formats an integer crashes the process (SIGSEGV, also from a plain
// .cpp extension) instead of raising; strings and dtypes format fine.
void check_bias(const at::Tensor& x, const at::Tensor& b, int64_t C) {
  TORCH_CHECK(b.is_cuda() && b.device() == x.device(), "bias_act: b must be on x's device");
  TORCH_CHECK(b.dim() == 1 && b.size(0) == C, "bias_act: b must have shape [C], C = x.size(dim)");
  TORCH_CHECK(b.scalar_type() == x.scalar_type(), "bias_act: b must have x's dtype");
  TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
}

// x dense channels-last [N, C, H, W] (bias along C): bias_act_nhwc.cu reads it without a copy.
bool channels_last_4d(const at::Tensor& x) {
  return x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

void bias_act_nchw_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, at::Tensor& y,
                        int64_t C, int64_t inner, int64_t act, int64_t order, double alpha, double gain,
                        double clamp);
void bias_act_epilogue_nchw_cuda(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, const at::Tensor& s,
                                 const at::Tensor& a, int64_t a_sn, int64_t a_sc, int64_t C, int64_t inner,
                                 int64_t act, double alpha, double gain, double clamp);
void bias_act_nhwc_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, at::Tensor& y,
                        const at::Tensor& s, const at::Tensor& a, int64_t act, int64_t order,
                        double alpha, double gain, double clamp);

at::Tensor bias_act_cuda(at::Tensor x, at::Tensor b, at::Tensor g, int64_t dim,
                            int64_t act, int64_t order, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
  const bool nhwc = dim == 1 && channels_last_4d(x);
  TORCH_CHECK(x.is_contiguous() || nhwc, "bias_act: x must be contiguous (or channels-last with dim 1)");
  TORCH_CHECK(x.dim() >= 1 && dim >= 0 && dim < x.dim(), "bias_act: dim ", dim, " out of range for ",
              x.dim(), "-D x");
  const bool has_b = b.numel() > 0;
  const int64_t C = x.size(dim);
  if (has_b) check_bias(x, b, C);
  if (order > 0) {
    TORCH_CHECK(g.sizes() == x.sizes(), "bias_act: gradient must have x's shape");
    TORCH_CHECK(g.scalar_type() == x.scalar_type(), "bias_act: gradient must have x's dtype");
    TORCH_CHECK(g.is_contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous) &&
                    g.device() == x.device(),
                "bias_act: gradient must be on x's device, contiguous in x's memory format");
  }
  TORCH_CHECK(act >= kLinear && act <= kSwish, "bias_act: unknown activation id ", act);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);  // keeps x's memory format
  if (x.numel() == 0) return y;
  if (nhwc) {
    bias_act_nhwc_cuda(x, has_b ? b : at::Tensor(), g, y, at::Tensor(), at::Tensor(), act, order, alpha, gain, clamp);
    return y;
  }
  int64_t inner = 1;
  for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
  bias_act_nchw_cuda(x, has_b ? b : at::Tensor(), g, y, C, inner, act, order, alpha, gain, clamp);
  return y;
}

at::Tensor bias_act_epilogue_cuda(at::Tensor x, at::Tensor b, at::Tensor s, at::Tensor a,
                                  int64_t act, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
  const bool nhwc = channels_last_4d(x);
  TORCH_CHECK(x.is_contiguous() || nhwc, "bias_act: x must be contiguous or channels-last");
  TORCH_CHECK(x.dim() >= 2, "bias_act: scale/addend need x of shape [N, C, *spatial]");
  TORCH_CHECK(act >= kLinear && act <= kSwish, "bias_act: unknown activation id");
  const int64_t N = x.size(0), C = x.size(1);
  int64_t inner = 1;
  for (int64_t i = 2; i < x.dim(); ++i) inner *= x.size(i);
  // Undefined or empty tensors mean "absent" (the Python side passes empty ones).
  const bool has_b = b.defined() && b.numel() > 0;
  const bool has_s = s.defined() && s.numel() > 0;
  const bool has_a = a.defined() && a.numel() > 0;
  if (has_b) check_bias(x, b, C);
  int64_t a_sn = 0, a_sc = 0;  // elements between the addend's samples / channels (0: broadcast)
  if (has_s) {
    TORCH_CHECK(s.is_cuda() && s.device() == x.device(), "bias_act: scale must be on x's device");
    TORCH_CHECK(s.dim() == 2 && s.size(0) == N && s.size(1) == C,
                "bias_act: scale must have shape [N, C] = x.shape[:2]");
    TORCH_CHECK(s.scalar_type() == x.scalar_type(), "bias_act: scale must have x's dtype");
    TORCH_CHECK(s.is_contiguous(), "bias_act: scale must be contiguous");
  }
  if (has_a) {
    TORCH_CHECK(a.is_cuda() && a.device() == x.device(), "bias_act: addend must be on x's device");
    TORCH_CHECK(a.dim() == 3 && (a.size(0) == 1 || a.size(0) == N) && (a.size(1) == 1 || a.size(1) == C) &&
                    a.size(2) == inner,
                "bias_act: addend must have shape [1 or N, 1 or C, prod(x.shape[2:])]");
    TORCH_CHECK(a.scalar_type() == x.scalar_type(), "bias_act: addend must have x's dtype");
    TORCH_CHECK(nhwc || a.is_contiguous(), "bias_act: addend must be contiguous");  // strided for NHWC
    a_sc = a.size(1) == 1 ? 0 : inner;
    a_sn = a.size(0) == 1 ? 0 : a.size(1) * inner;
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  if (nhwc) {
    bias_act_nhwc_cuda(x, has_b ? b : at::Tensor(), at::Tensor(), y, has_s ? s : at::Tensor(),
                       has_a ? a : at::Tensor(), act, 0, alpha, gain, clamp);
    return y;
  }
  bias_act_epilogue_nchw_cuda(x, has_b ? b : at::Tensor(), y, has_s ? s : at::Tensor(), has_a ? a : at::Tensor(),
                              a_sn, a_sc, C, inner, act, alpha, gain, clamp);
  return y;
}

}  // namespace lgfa

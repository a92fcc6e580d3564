// bias_act for channels-last 4-D tensors: x [N, C, H, W] stored as [N, H, W, C], bias along C.
//
// The same maths as bias_act.cu (orders 0, 1, 2 and the forward-only scale / addend epilogue),
// with the tensor read as [P, C] (P = N * H * W pixels, channels innermost). A thread keeps one
// group of V channels for its whole grid-stride walk over pixels, so its V bias values are loaded
// once and no per-element division is needed: the walk's stride is a whole number of pixels.
// With V = 16 / sizeof(T) every access is a 16-byte vector (needs C % V == 0 and aligned data);
// V = 1 covers any C.
//
// Epilogue operands: scale s [N, C] (contiguous, read as one vector per pixel and group) and the
// addend a viewed as [1|N, 1|C, H*W] with element strides (a_sn, a_sc, a_sp), 0 over broadcast
// dimensions; an addend broadcast over channels (the generator's noise) is one load per vector.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act.cuh"

namespace lgfa {
namespace {

using namespace bias_act_detail;

template <typename T>
struct NhwcArgs {
  const T* x;
  const T* b;   // [C] or nullptr
  const T* g;   // incoming gradient (ORDER > 0), x's layout
  T* y;
  const T* s;   // [N, C] or nullptr (EPI)
  const T* a;   // addend base or nullptr (EPI)
  int64_t a_sn, a_sc, a_sp;
  int64_t P;    // pixels N * H * W
  int C;
  unsigned HW;  // pixels per sample (P < 2^32, checked on the host)
};

template <typename T, int ACT, int ORDER, bool EPI, int V>
__global__ void __launch_bounds__(kThreads) bias_act_nhwc_kernel(
    NhwcArgs<T> p, at::opmath_type<T> alpha, at::opmath_type<T> gain, at::opmath_type<T> clamp) {
  using A = at::opmath_type<T>;
  using Vec = VecT<T, V>;
  static_assert(!EPI || ORDER == 0, "the epilogue is forward-only");
  const int groups = p.C / V;  // channel groups per pixel
  const int64_t t = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  const int64_t sweep = (int64_t)gridDim.x * kThreads / groups;  // pixels per sweep of the grid
  const int64_t first = t / groups;
  if (first >= sweep) return;  // threads past the last whole pixel of a sweep
  const int c0 = (int)(t - first * groups) * V;
  A bias[V];
  if (p.b != nullptr) {
    const Vec bv = *reinterpret_cast<const Vec*>(p.b + c0);
#pragma unroll
    for (int k = 0; k < V; ++k) bias[k] = static_cast<A>(bv.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) bias[k] = A(0);
  }
  for (int64_t p0 = first; p0 < p.P; p0 += sweep * kUnroll) {
    Vec xin[kUnroll], gin[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // all loads before any use
      const int64_t px = p0 + u * sweep;
      if (px < p.P) {
        xin[u] = *reinterpret_cast<const Vec*>(p.x + px * p.C + c0);
        if constexpr (ORDER > 0) gin[u] = *reinterpret_cast<const Vec*>(p.g + px * p.C + c0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t px = p0 + u * sweep;
      if (px >= p.P) break;
      A scale[V], add[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        scale[k] = A(1);
        add[k] = A(0);
      }
      if constexpr (EPI) {
        const unsigned n = (unsigned)px / p.HW, pix = (unsigned)px - n * p.HW;
        if (p.s != nullptr) {
          const Vec sv = *reinterpret_cast<const Vec*>(p.s + (int64_t)n * p.C + c0);
#pragma unroll
          for (int k = 0; k < V; ++k) scale[k] = static_cast<A>(sv.v[k]);
        }
        if (p.a != nullptr) {
          const T* ap = p.a + n * p.a_sn + pix * p.a_sp;
          if (p.a_sc == 0) {
            const A av = static_cast<A>(*ap);
#pragma unroll
            for (int k = 0; k < V; ++k) add[k] = av;
          } else {
#pragma unroll
            for (int k = 0; k < V; ++k) add[k] = static_cast<A>(ap[(c0 + k) * p.a_sc]);
          }
        }
      }
      Vec out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A z = static_cast<A>(xin[u].v[k]);
        if constexpr (EPI) z = z * scale[k] + add[k];  // the NCHW kernel's order: scale, addend, bias
        const A gk = ORDER > 0 ? static_cast<A>(gin[u].v[k]) : A(0);
        out.v[k] = static_cast<T>(bias_act_elem<ACT, ORDER, A>(z + bias[k], gk, alpha, gain, clamp));
      }
      *reinterpret_cast<Vec*>(p.y + px * p.C + c0) = out;
    }
  }
}

template <typename T, int ACT, int ORDER, bool EPI>
void launch_nhwc(const NhwcArgs<T>& args, int device, double alpha, double gain, double clamp) {
  using A = at::opmath_type<T>;
  constexpr int V = 16 / sizeof(T);
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = args.C % V == 0 && aligned(args.x) && aligned(args.y) &&
                   (ORDER == 0 || aligned(args.g)) && (args.b == nullptr || aligned(args.b)) &&
                   (!EPI || args.s == nullptr || aligned(args.s));
  const int v = vec ? V : 1;
  const int groups = args.C / v;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t work = (args.P * groups + kThreads * kUnroll - 1) / (kThreads * kUnroll);
  const int64_t min_blocks = (groups + kThreads - 1) / kThreads;  // at least one whole pixel per sweep
  const int64_t blocks = std::max<int64_t>(std::min<int64_t>(work, (int64_t)sms * 32), min_blocks);
  TORCH_CHECK(blocks < (1LL << 31), "bias_act: too many channels for the channels-last kernel");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vec) {
    bias_act_nhwc_kernel<T, ACT, ORDER, EPI, V><<<(unsigned)blocks, kThreads, 0, stream>>>(
        args, A(alpha), A(gain), A(clamp));
  } else {
    bias_act_nhwc_kernel<T, ACT, ORDER, EPI, 1><<<(unsigned)blocks, kThreads, 0, stream>>>(
        args, A(alpha), A(gain), A(clamp));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int ACT>
void dispatch_order_nhwc(int64_t order, bool epi, const NhwcArgs<T>& args, int device, double alpha,
                         double gain, double clamp) {
  if (epi) {
    TORCH_CHECK(order == 0, "bias_act: the scale/addend epilogue is forward-only (order 0)");
    launch_nhwc<T, ACT, 0, true>(args, device, alpha, gain, clamp);
  } else if (order == 0) {
    launch_nhwc<T, ACT, 0, false>(args, device, alpha, gain, clamp);
  } else if (order == 1) {
    launch_nhwc<T, ACT, 1, false>(args, device, alpha, gain, clamp);
  } else if (order == 2) {
    launch_nhwc<T, ACT, 2, false>(args, device, alpha, gain, clamp);
  } else {
    TORCH_CHECK(false, "bias_act: order must be 0, 1 or 2");
  }
}

template <typename T>
void dispatch_act_nhwc(int64_t act, int64_t order, bool epi, const NhwcArgs<T>& args, int device,
                       double alpha, double gain, double clamp) {
  switch (act) {
#define LGFA_NHWC_ACT(A_)                                                         \
  case A_:                                                                        \
    dispatch_order_nhwc<T, A_>(order, epi, args, device, alpha, gain, clamp);     \
    return;
    LGFA_NHWC_ACT(kLinear)
    LGFA_NHWC_ACT(kRelu)
    LGFA_NHWC_ACT(kLrelu)
    LGFA_NHWC_ACT(kTanh)
    LGFA_NHWC_ACT(kSigmoid)
    LGFA_NHWC_ACT(kElu)
    LGFA_NHWC_ACT(kSelu)
    LGFA_NHWC_ACT(kSoftplus)
    LGFA_NHWC_ACT(kSwish)
#undef LGFA_NHWC_ACT
  }
  TORCH_CHECK(false, "bias_act: unknown activation id");
}

}  // namespace

// x, g (order > 0) and y: dense channels-last [N, C, H, W] of one dtype; b [C] contiguous or
// undefined; s [N, C] contiguous or undefined; a [1|N, 1|C, H*W] (any strides) or undefined.
// s or a defined selects the forward-only epilogue (order must be 0). Checked by the caller.
void bias_act_nhwc_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, at::Tensor& y,
                        const at::Tensor& s, const at::Tensor& a, int64_t act, int64_t order,
                        double alpha, double gain, double clamp) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  TORCH_CHECK(N * HW < (1LL << 32) && C < (1LL << 30), "bias_act: tensor too large for the channels-last kernel");
  const bool epi = s.defined() || a.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_nhwc_cuda", [&] {
    NhwcArgs<scalar_t> args;
    args.x = x.data_ptr<scalar_t>();
    args.b = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    args.g = order > 0 ? g.data_ptr<scalar_t>() : nullptr;
    args.y = y.data_ptr<scalar_t>();
    args.s = s.defined() ? s.data_ptr<scalar_t>() : nullptr;
    args.a = a.defined() ? a.data_ptr<scalar_t>() : nullptr;
    args.a_sn = a.defined() && a.size(0) > 1 ? a.stride(0) : 0;
    args.a_sc = a.defined() && a.size(1) > 1 ? a.stride(1) : 0;
    args.a_sp = a.defined() && a.size(2) > 1 ? a.stride(2) : 0;
    args.P = N * HW;
    args.C = (int)C;
    args.HW = (unsigned)HW;
    dispatch_act_nhwc<scalar_t>(act, order, epi, args, x.get_device(), alpha, gain, clamp);
  });
}

}  // namespace lgfa

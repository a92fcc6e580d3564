// bias_act for every x but a channels-last 4-D one (bias_act_nhwc.cu): x contiguous, read as
// [outer, C, inner] with the bias along C (x.size(dim)); the maths: bias_act.cu, bias_act.cuh.
//
// Three kernels, picked per call by launch():
//  * bias_act_rows_kernel: one bias value (and epilogue scale) per row of `inner` elements,
//    16-byte vector accesses;
//  * bias_act_packed_kernel: rows shorter than one block's reach, a grid-stride loop over the
//    vectors of all rows;
//  * bias_act_flat_kernel: small `inner` or unaligned data, one element per step.
// Each has an EPI instantiation for the forward-only scale / addend epilogue.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "bias_act.cuh"

namespace lgfa {
namespace {

using namespace bias_act_detail;  // activations, kThreads, kUnroll, VecT

// Optional pre-bias terms of the forward epilogue (only read by the EPI = true instantiations).
// Row r = n * C + c of x [N*C, inner]: scale s[r]; addend row a + n * a_sn + c * a_sc, where a
// stride of 0 broadcasts the addend over samples / channels.
template <typename T>
struct Epilogue {
  const T* s = nullptr;  // [N * C] or nullptr
  const T* a = nullptr;  // addend base or nullptr
  int64_t a_sn = 0;      // elements between samples of the addend (0: broadcast)
  int64_t a_sc = 0;      // elements between channels of the addend (0: broadcast)
};

// One vector of V outputs, shared by the vectorised kernels: z = x (* scale + addend with EPI, in
// the reference's order: addcmul(a, x, s), then + bias), then the activation or its derivative
// against the incoming gradient g (ORDER > 0). `a` is read only with has_a (a flag, not a pointer:
// taking the address of a register array element would move the array to local memory).
template <typename T, int ACT, int ORDER, bool EPI, int V, typename A>
__device__ __forceinline__ VecT<T, V> bias_act_vec(const VecT<T, V>& x, const VecT<T, V>& g,
                                                   const VecT<T, V>& a, bool has_a, A bias, A scale,
                                                   A alpha, A gain, A clamp) {
  VecT<T, V> out;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const A gk = ORDER > 0 ? static_cast<A>(g.v[k]) : A(0);
    A z = static_cast<A>(x.v[k]);
    if constexpr (EPI) {
      z = z * scale;
      if (has_a) z += static_cast<A>(a.v[k]);
    }
    out.v[k] = static_cast<T>(bias_act_elem<ACT, ORDER, A>(z + bias, gk, alpha, gain, clamp));
  }
  return out;
}

// Layout [rows, inner] with rows = outer * C: one bias value per row (no per-element division)
// and 16-byte vector accesses (needs inner % V == 0 and 16-byte aligned pointers). With EPI, the
// scale is one value per row as well, and the addend row is read with the same vector width.
template <typename T, int ACT, int ORDER, bool EPI>
__global__ void __launch_bounds__(kThreads) bias_act_rows_kernel(
    const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ g, T* __restrict__ y,
    Epilogue<T> ep, int64_t rows, int64_t inner, int64_t C, at::opmath_type<T> alpha,
    at::opmath_type<T> gain, at::opmath_type<T> clamp) {
  using A = at::opmath_type<T>;
  constexpr int V = 16 / sizeof(T);
  using Vec = VecT<T, V>;
  static_assert(!EPI || ORDER == 0, "the epilogue is forward-only");
  const int64_t nvec = inner / V;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t c = r % C;
    const A bias = b != nullptr ? static_cast<A>(b[c]) : A(0);
    const Vec* xr = reinterpret_cast<const Vec*>(x + r * inner);
    const Vec* gr = reinterpret_cast<const Vec*>(g + (ORDER > 0 ? r * inner : 0));
    Vec* yr = reinterpret_cast<Vec*>(y + r * inner);
    A scale = A(1);
    const Vec* ar = nullptr;
    if constexpr (EPI) {
      if (ep.s != nullptr) scale = static_cast<A>(ep.s[r]);
      if (ep.a != nullptr) ar = reinterpret_cast<const Vec*>(ep.a + (r / C) * ep.a_sn + c * ep.a_sc);
    }
    // kUnroll vectors per thread, all loads issued before any use (memory-level parallelism).
    for (int64_t j0 = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x; j0 < nvec;
         j0 += (int64_t)gridDim.x * kThreads * kUnroll) {
      Vec xin[kUnroll], gin[kUnroll], ain[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + u * kThreads;
        if (j < nvec) {
          xin[u] = xr[j];
          if constexpr (ORDER > 0) gin[u] = gr[j];
          if constexpr (EPI) {
            if (ar != nullptr) ain[u] = ar[j];
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + u * kThreads;
        if (j >= nvec) break;
        yr[j] = bias_act_vec<T, ACT, ORDER, EPI, V, A>(xin[u], gin[u], ain[u], ar != nullptr, bias, scale,
                                                       alpha, gain, clamp);
      }
    }
  }
}

// Rows shorter than one block's reach (kThreads * kUnroll vectors: a 64 x 64 map in half precision
// is 512 vectors) would leave half of every block idle: a grid-stride loop over the vectors of all
// rows instead, the row (bias, scale, addend row) worked out per vector.
template <typename T, int ACT, int ORDER, bool EPI>
__global__ void __launch_bounds__(kThreads) bias_act_packed_kernel(
    const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ g, T* __restrict__ y,
    Epilogue<T> ep, int64_t total_vec, int64_t nvec, int64_t C, at::opmath_type<T> alpha,
    at::opmath_type<T> gain, at::opmath_type<T> clamp) {
  using A = at::opmath_type<T>;
  constexpr int V = 16 / sizeof(T);
  using Vec = VecT<T, V>;
  static_assert(!EPI || ORDER == 0, "the epilogue is forward-only");
  const Vec* xv = reinterpret_cast<const Vec*>(x);
  const Vec* gv = reinterpret_cast<const Vec*>(g);
  Vec* yv = reinterpret_cast<Vec*>(y);
  for (int64_t i0 = (int64_t)blockIdx.x * kThreads * kUnroll + threadIdx.x; i0 < total_vec;
       i0 += (int64_t)gridDim.x * kThreads * kUnroll) {
    Vec xin[kUnroll], gin[kUnroll], ain[kUnroll];
    int64_t row[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // all loads before any use, as in the rows kernel
      const int64_t i = i0 + u * kThreads;
      row[u] = i / nvec;
      if (i < total_vec) {
        xin[u] = xv[i];
        if constexpr (ORDER > 0) gin[u] = gv[i];
        if constexpr (EPI) {
          if (ep.a != nullptr) {
            const int64_t r = row[u], c = r % C;
            ain[u] = reinterpret_cast<const Vec*>(ep.a + (r / C) * ep.a_sn + c * ep.a_sc)[i - r * nvec];
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * kThreads;
      if (i >= total_vec) break;
      const int64_t r = row[u];
      const A bias = b != nullptr ? static_cast<A>(b[r % C]) : A(0);
      A scale = A(1);
      if constexpr (EPI) {
        if (ep.s != nullptr) scale = static_cast<A>(ep.s[r]);
      }
      yv[i] = bias_act_vec<T, ACT, ORDER, EPI, V, A>(xin[u], gin[u], ain[u], ep.a != nullptr, bias, scale,
                                                     alpha, gain, clamp);
    }
  }
}

// Any layout with small `inner` (e.g. [N, C] fully-connected activations), or unaligned data:
// flat grid-stride loop.
template <typename T, int ACT, int ORDER, bool EPI>
__global__ void __launch_bounds__(kThreads) bias_act_flat_kernel(
    const T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ g, T* __restrict__ y,
    Epilogue<T> ep, int64_t numel, int64_t inner, int64_t C, at::opmath_type<T> alpha,
    at::opmath_type<T> gain, at::opmath_type<T> clamp) {
  using A = at::opmath_type<T>;
  static_assert(!EPI || ORDER == 0, "the epilogue is forward-only");
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < numel;
       i += (int64_t)gridDim.x * kThreads) {
    const int64_t r = i / inner;  // row = n * C + c
    const int64_t c = r % C;
    const A bias = b != nullptr ? static_cast<A>(b[c]) : A(0);
    const A gv = ORDER > 0 ? static_cast<A>(g[i]) : A(0);
    A z = static_cast<A>(x[i]);
    if constexpr (EPI) {
      if (ep.s != nullptr) z = z * static_cast<A>(ep.s[r]);
      if (ep.a != nullptr) z += static_cast<A>(ep.a[(r / C) * ep.a_sn + c * ep.a_sc + (i - r * inner)]);
    }
    y[i] = static_cast<T>(bias_act_elem<ACT, ORDER, A>(z + bias, gv, alpha, gain, clamp));
  }
}

// Host-side epilogue operands (undefined tensors = absent); a_sn / a_sc as in Epilogue.
struct EpilogueArgs {
  at::Tensor s, a;
  int64_t a_sn = 0, a_sc = 0;
};

template <typename T, int ACT, int ORDER, bool EPI>
void launch(bool has_b, const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, at::Tensor& y,
            const EpilogueArgs& epi, int64_t C, int64_t inner, double alpha, double gain,
            double clamp) {
  using A = at::opmath_type<T>;
  const int64_t numel = x.numel();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* xp = x.data_ptr<T>();
  const T* bp = has_b ? b.data_ptr<T>() : nullptr;
  const T* gp = ORDER > 0 ? g.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  Epilogue<T> ep;
  if constexpr (EPI) {
    ep.s = epi.s.defined() ? epi.s.data_ptr<T>() : nullptr;
    ep.a = epi.a.defined() ? epi.a.data_ptr<T>() : nullptr;
    ep.a_sn = epi.a_sn;
    ep.a_sc = epi.a_sc;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  constexpr int V = 16 / sizeof(T);
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // Addend rows start at multiples of `inner` elements from its base, so with inner % V == 0 an
  // aligned base keeps every row aligned (the same holds for x, g and y).
  const bool vec_ok = inner >= 512 && inner % V == 0 && aligned(xp) && aligned(yp) &&
                      (ORDER == 0 || aligned(gp)) && (ep.a == nullptr || aligned(ep.a));
  if (vec_ok && inner / V < (int64_t)kThreads * kUnroll) {
    const int64_t total_vec = numel / V;
    int64_t blocks = std::min<int64_t>((total_vec + kThreads * kUnroll - 1) / (kThreads * kUnroll), (int64_t)sms * 32);
    bias_act_packed_kernel<T, ACT, ORDER, EPI><<<(unsigned)blocks, kThreads, 0, stream>>>(
        xp, bp, gp, yp, ep, total_vec, inner / V, C, A(alpha), A(gain), A(clamp));
  } else if (vec_ok) {
    const int64_t rows = numel / inner;
    int64_t bx = (inner / V + kThreads * kUnroll - 1) / (kThreads * kUnroll);
    int64_t by = std::min<int64_t>(rows, 65535);
    bias_act_rows_kernel<T, ACT, ORDER, EPI><<<dim3((unsigned)bx, (unsigned)by), kThreads, 0, stream>>>(
        xp, bp, gp, yp, ep, rows, inner, C, A(alpha), A(gain), A(clamp));
  } else {
    int64_t blocks = std::min<int64_t>((numel + kThreads - 1) / kThreads, (int64_t)sms * 32);
    bias_act_flat_kernel<T, ACT, ORDER, EPI><<<(unsigned)blocks, kThreads, 0, stream>>>(
        xp, bp, gp, yp, ep, numel, inner, C, A(alpha), A(gain), A(clamp));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// order 0 with an epilogue -> the EPI instantiation; orders 1 and 2 never have one.
template <typename T, int ACT>
void dispatch_order(int64_t order, bool has_b, const at::Tensor& x, const at::Tensor& b,
                    const at::Tensor& g, at::Tensor& y, const EpilogueArgs* epi, int64_t C,
                    int64_t inner, double alpha, double gain, double clamp) {
  if (order == 0 && epi != nullptr) {
    launch<T, ACT, 0, true>(has_b, x, b, g, y, *epi, C, inner, alpha, gain, clamp);
    return;
  }
  TORCH_CHECK(epi == nullptr, "bias_act: the scale/addend epilogue is forward-only (order 0)");
  const EpilogueArgs none;
#define LGFA_ORDER_CASE(O)                                                                   \
  if (order == O) {                                                                          \
    launch<T, ACT, O, false>(has_b, x, b, g, y, none, C, inner, alpha, gain, clamp);         \
    return;                                                                                  \
  }
  LGFA_ORDER_CASE(0)
  LGFA_ORDER_CASE(1)
  LGFA_ORDER_CASE(2)
#undef LGFA_ORDER_CASE
  TORCH_CHECK(false, "bias_act: order must be 0, 1 or 2, got ", order);
}

template <typename T>
void dispatch_act(int64_t act, int64_t order, bool has_b, const at::Tensor& x, const at::Tensor& b,
                  const at::Tensor& g, at::Tensor& y, const EpilogueArgs* epi, int64_t C,
                  int64_t inner, double alpha, double gain, double clamp) {
  switch (act) {
#define LGFA_ACT_CASE(A_)                                                                          \
  case A_:                                                                                         \
    dispatch_order<T, A_>(order, has_b, x, b, g, y, epi, C, inner, alpha, gain, clamp);           \
    return;
    LGFA_ACT_CASE(kLinear)
    LGFA_ACT_CASE(kRelu)
    LGFA_ACT_CASE(kLrelu)
    LGFA_ACT_CASE(kTanh)
    LGFA_ACT_CASE(kSigmoid)
    LGFA_ACT_CASE(kElu)
    LGFA_ACT_CASE(kSelu)
    LGFA_ACT_CASE(kSoftplus)
    LGFA_ACT_CASE(kSwish)
#undef LGFA_ACT_CASE
  }
  TORCH_CHECK(false, "bias_act: unknown activation id ", act);
}

}  // namespace

// x (and g, order > 0) contiguous, its bias along C = x.size(dim) and `inner` the product of the
// sizes after dim; y like x; b [C] contiguous or undefined. Checked by the caller (bias_act.cu).
void bias_act_nchw_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g, at::Tensor& y,
                        int64_t C, int64_t inner, int64_t act, int64_t order, double alpha, double gain,
                        double clamp) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
    dispatch_act<scalar_t>(act, order, b.defined(), x, b, g, y, nullptr, C, inner, alpha, gain, clamp);
  });
}

// The forward-only epilogue of x contiguous [N, C, *spatial] (inner = prod(spatial)): s [N, C]
// contiguous or undefined; a [1|N, 1|C, inner] contiguous or undefined, its rows a_sn / a_sc
// elements apart as in Epilogue. Checked by the caller (bias_act.cu).
void bias_act_epilogue_nchw_cuda(const at::Tensor& x, const at::Tensor& b, at::Tensor& y, const at::Tensor& s,
                                 const at::Tensor& a, int64_t a_sn, int64_t a_sc, int64_t C, int64_t inner,
                                 int64_t act, double alpha, double gain, double clamp) {
  EpilogueArgs epi;
  epi.s = s;
  epi.a = a;
  epi.a_sn = a_sn;
  epi.a_sc = a_sc;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_epilogue_cuda", [&] {
    dispatch_act<scalar_t>(act, 0, b.defined(), x, b, at::Tensor(), y, &epi, C, inner, alpha, gain, clamp);
  });
}

}  // namespace lgfa

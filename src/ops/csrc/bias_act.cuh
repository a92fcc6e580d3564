// Activation maths shared by the NCHW (bias_act_nchw.cu) and channels-last (bias_act_nhwc.cu)
// kernels: the value and first two derivatives of each activation, the gain / clamp / mask rule,
// the launch constants and the 16-byte vector type.
#pragma once

#include <ATen/OpMathType.h>

namespace lgfa {
namespace bias_act_detail {

enum Act { kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish };

template <typename A>
__device__ __forceinline__ A sigmoid_of(A z) {
  return A(1) / (A(1) + exp(-z));
}

// Value, first and second derivative of the activation at z (the compiler drops what the
// requested ORDER does not use).
template <int ACT, typename A>
__device__ __forceinline__ void act_eval(A z, A alpha, A& v, A& d1, A& d2) {
  if constexpr (ACT == kLinear) {
    v = z; d1 = A(1); d2 = A(0);
  } else if constexpr (ACT == kRelu) {
    v = z > A(0) ? z : A(0); d1 = z > A(0) ? A(1) : A(0); d2 = A(0);
  } else if constexpr (ACT == kLrelu) {
    v = z > A(0) ? z : alpha * z; d1 = z > A(0) ? A(1) : alpha; d2 = A(0);
  } else if constexpr (ACT == kTanh) {
    A t = tanh(z);
    v = t; d1 = A(1) - t * t; d2 = A(-2) * t * d1;
  } else if constexpr (ACT == kSigmoid) {
    A s = sigmoid_of(z);
    v = s; d1 = s * (A(1) - s); d2 = d1 * (A(1) - A(2) * s);
  } else if constexpr (ACT == kElu) {
    A e = exp(z);
    // At the kink z == 0: d1 = 1 from both sides; d2 = 0 there, as PyTorch's double backward
    // (which masks with z < 0) - exact zeros are common in bfloat16 when x == -b.
    v = z > A(0) ? z : expm1(z); d1 = z > A(0) ? A(1) : e; d2 = z < A(0) ? e : A(0);
  } else if constexpr (ACT == kSelu) {
    const A scale = A(1.0507009873554804934193349852946);
    const A a = A(1.6732632423543772848170429916717);
    A e = exp(z);
    v = z > A(0) ? scale * z : scale * a * expm1(z);
    d1 = z > A(0) ? scale : scale * a * e;
    d2 = z < A(0) ? scale * a * e : A(0);  // 0 at z == 0, as for elu
  } else if constexpr (ACT == kSoftplus) {
    // Same threshold (20) as torch.nn.functional.softplus: linear above it.
    A s = sigmoid_of(z);
    bool lin = z > A(20);
    v = lin ? z : log1p(exp(z)); d1 = lin ? A(1) : s; d2 = lin ? A(0) : s * (A(1) - s);
  } else {  // kSwish: z * sigmoid(z)
    A s = sigmoid_of(z);
    v = z * s;
    d1 = s * (A(1) + z * (A(1) - s));
    d2 = s * (A(1) - s) * (A(2) + z * (A(1) - A(2) * s));
  }
}

template <int ACT, int ORDER, typename A>
__device__ __forceinline__ A bias_act_elem(A z, A g, A alpha, A gain, A clamp) {
  A v, d1, d2;
  act_eval<ACT, A>(z, alpha, v, d1, d2);
  A out = v * gain;
  if constexpr (ORDER == 0) {
    if (clamp >= A(0)) out = out > clamp ? clamp : (out < -clamp ? -clamp : out);
    return out;
  }
  bool pass = clamp < A(0) || (out <= clamp && out >= -clamp);
  A d = ORDER == 1 ? d1 : d2;
  return pass ? g * d * gain : A(0);
}

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename T, int V>
struct alignas(sizeof(T) * V) VecT {
  T v[V];
};

}  // namespace bias_act_detail
}  // namespace lgfa

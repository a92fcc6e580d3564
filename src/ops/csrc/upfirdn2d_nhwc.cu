// upfirdn2d for channels-last 4-D tensors: x [N, C, H, W] stored as [N, H, W, C].
//
// The same operation as upfirdn2d.cu (zero-insertion upsampling, padding / cropping, 2D FIR
// correlation with the caller's flipped and scaled filter w [fh, fw], decimation), written for the
// layout in which every pixel is a run of C channels. A thread computes V adjacent channels
// (V = 16 / sizeof(T) with 16-byte vector accesses when C % V == 0 and the data are aligned, else
// V = 1), so the threads of a warp read consecutive addresses for every tap: coalescing comes from
// the channels, with no shared-memory staging. Grid: x = (output column, channel group) with the
// group fastest, y = output rows, z = samples (both grid-strided).
//
// Two kernels:
//  * fir_nhwc_kernel, the plain filter (up = down = 1) with a compile-time filter size: a thread
//    walks RPT output rows of one column, reading each input row of the window once (FW vector
//    loads) and adding it into the FH outputs it feeds (accumulators rotate), i.e. FW * (RPT + FH - 1)
//    loads for RPT outputs instead of FH * FW per output;
//  * upfirdn2d_nhwc_kernel, one output per thread, every tap that lands on a real input sample
//    (compile-time variants for StyleGAN's 2x up- and downsampling, runtime values otherwise).

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace lgfa {
namespace {

struct NhwcParams {
  int N, C, H, W, OH, OW;
  int fh, fw, upx, upy, downx, downy, px0, py0;
};

constexpr int kThreads = 256;

__device__ __forceinline__ int floor_div(int a, int b) {  // b > 0
  const int q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
__device__ __forceinline__ int pos_mod(int a, int b) {
  const int r = a % b;
  return r < 0 ? r + b : r;
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Chan {
  T v[V];
};

// Plain FIR filter (up = down = 1), filter FH x FW known at compile time.
template <typename T, int V, int FH, int FW, int RPT>
__global__ void __launch_bounds__(kThreads) fir_nhwc_kernel(
    const T* __restrict__ x, const at::opmath_type<T>* __restrict__ f, T* __restrict__ y, NhwcParams p) {
  using A = at::opmath_type<T>;
  using Vec = Chan<T, V>;
  const int groups = p.C / V;
  const int idx = blockIdx.x * kThreads + threadIdx.x;
  if (idx >= p.OW * groups) return;
  const int ox = idx / groups;
  const int c0 = (idx - ox * groups) * V;
  A fr[FH * FW];
#pragma unroll
  for (int k = 0; k < FH * FW; ++k) fr[k] = f[k];
  Vec zero;
#pragma unroll
  for (int c = 0; c < V; ++c) zero.v[c] = T(0);
  const int ix0 = ox - p.px0;  // input column of tap j = 0
  for (int n = blockIdx.z; n < p.N; n += gridDim.z) {
    const T* xn = x + (int64_t)n * p.H * p.W * p.C + c0;
    T* yn = y + (int64_t)n * p.OH * p.OW * p.C + c0;
    for (int oy_a = blockIdx.y * RPT; oy_a < p.OH; oy_a += gridDim.y * RPT) {
      const int rows = min(RPT, p.OH - oy_a);
      A acc[FH][V];
#pragma unroll
      for (int k = 0; k < FH; ++k)
#pragma unroll
        for (int c = 0; c < V; ++c) acc[k][c] = A(0);
#pragma unroll
      for (int q = 0; q < RPT + FH - 1; ++q) {  // input row q feeds output rows q-FH+1 .. q
        if (q >= rows + FH - 1) break;
        const int iy = oy_a + q - p.py0;
        const bool row_ok = iy >= 0 && iy < p.H;
        A v[FW][V];
#pragma unroll
        for (int j = 0; j < FW; ++j) {
          const int ix = ix0 + j;
          const Vec in = (row_ok && ix >= 0 && ix < p.W)
                             ? *reinterpret_cast<const Vec*>(xn + ((int64_t)iy * p.W + ix) * p.C)
                             : zero;
#pragma unroll
          for (int c = 0; c < V; ++c) v[j][c] = static_cast<A>(in.v[c]);
        }
#pragma unroll
        for (int k = 0; k < FH; ++k)  // acc[k]: output row q-FH+1+k, filter row FH-1-k
#pragma unroll
          for (int j = 0; j < FW; ++j)
#pragma unroll
            for (int c = 0; c < V; ++c) acc[k][c] += v[j][c] * fr[(FH - 1 - k) * FW + j];
        const int o = q - FH + 1;
        if (o >= 0) {
          Vec out;
#pragma unroll
          for (int c = 0; c < V; ++c) out.v[c] = static_cast<T>(acc[0][c]);
          *reinterpret_cast<Vec*>(yn + ((int64_t)(oy_a + o) * p.OW + ox) * p.C) = out;
        }
#pragma unroll
        for (int k = 0; k + 1 < FH; ++k)
#pragma unroll
          for (int c = 0; c < V; ++c) acc[k][c] = acc[k + 1][c];
#pragma unroll
        for (int c = 0; c < V; ++c) acc[FH - 1][c] = A(0);
      }
    }
  }
}

// Any up / down / filter. Template values UPX..FW > 0 are compile-time, 0 = read from p.
template <typename T, int V, int UPX, int UPY, int DNX, int DNY, int FH, int FW>
__global__ void __launch_bounds__(kThreads) upfirdn2d_nhwc_kernel(
    const T* __restrict__ x, const at::opmath_type<T>* __restrict__ f, T* __restrict__ y, NhwcParams p) {
  using A = at::opmath_type<T>;
  using Vec = Chan<T, V>;
  const int upx = UPX ? UPX : p.upx, upy = UPY ? UPY : p.upy;
  const int dnx = DNX ? DNX : p.downx, dny = DNY ? DNY : p.downy;
  const int fh = FH ? FH : p.fh, fw = FW ? FW : p.fw;
  // Taps per output along each axis that can land on real samples (constant when all are).
  const int kh = (UPY && FH) ? (FH + UPY - 1) / UPY : (fh + upy - 1) / upy;
  const int kw = (UPX && FW) ? (FW + UPX - 1) / UPX : (fw + upx - 1) / upx;
  const int groups = p.C / V;
  const int idx = blockIdx.x * kThreads + threadIdx.x;
  if (idx >= p.OW * groups) return;
  const int ox = idx / groups;
  const int c0 = (idx - ox * groups) * V;
  const int ux = ox * dnx - p.px0;  // upsampled column of tap j = 0
  const int j0 = UPX == 1 ? 0 : pos_mod(-ux, upx);  // first tap on a real column
  const int ix0 = floor_div(ux + j0, upx);
  for (int n = blockIdx.z; n < p.N; n += gridDim.z) {
    const T* xn = x + (int64_t)n * p.H * p.W * p.C + c0;
    T* yn = y + (int64_t)n * p.OH * p.OW * p.C + c0;
    for (int oy = blockIdx.y; oy < p.OH; oy += gridDim.y) {
      const int uy = oy * dny - p.py0;
      const int i0 = UPY == 1 ? 0 : pos_mod(-uy, upy);
      const int iy0 = floor_div(uy + i0, upy);
      A acc[V];
#pragma unroll
      for (int c = 0; c < V; ++c) acc[c] = A(0);
#pragma unroll
      for (int ki = 0; ki < kh; ++ki) {
        const int i = i0 + ki * upy, iy = iy0 + ki;
        if (i >= fh || iy < 0 || iy >= p.H) continue;
        const T* row = xn + (int64_t)iy * p.W * p.C;
#pragma unroll
        for (int kj = 0; kj < kw; ++kj) {
          const int j = j0 + kj * upx, ix = ix0 + kj;
          if (j >= fw || ix < 0 || ix >= p.W) continue;
          const Vec in = *reinterpret_cast<const Vec*>(row + (int64_t)ix * p.C);
          const A w = f[i * fw + j];
#pragma unroll
          for (int c = 0; c < V; ++c) acc[c] += static_cast<A>(in.v[c]) * w;
        }
      }
      Vec out;
#pragma unroll
      for (int c = 0; c < V; ++c) out.v[c] = static_cast<T>(acc[c]);
      *reinterpret_cast<Vec*>(yn + ((int64_t)oy * p.OW + ox) * p.C) = out;
    }
  }
}

template <typename T, int V>
void launch_nhwc(const T* xp, const at::opmath_type<T>* fp, T* yp, const NhwcParams& p, cudaStream_t stream) {
  constexpr int kRows = 8;  // output rows per thread in the plain-filter kernel
  const int64_t cols = (int64_t)p.OW * (p.C / V);
  TORCH_CHECK(cols < (1LL << 31) - kThreads, "upfirdn2d: output row too wide for the channels-last kernel");
  const unsigned gx = (unsigned)((cols + kThreads - 1) / kThreads);
  const unsigned gz = (unsigned)std::min(p.N, 65535);
  const bool f44 = p.fh == 4 && p.fw == 4;
  const bool plain = p.upx == 1 && p.upy == 1 && p.downx == 1 && p.downy == 1;
  if (f44 && plain) {
    const unsigned gy = (unsigned)std::min((p.OH + kRows - 1) / kRows, 65535);
    fir_nhwc_kernel<T, V, 4, 4, kRows><<<dim3(gx, gy, gz), kThreads, 0, stream>>>(xp, fp, yp, p);
    return;
  }
  const dim3 grid(gx, (unsigned)std::min(p.OH, 65535), gz);
  if (f44 && p.upx == 2 && p.upy == 2 && p.downx == 1 && p.downy == 1) {
    upfirdn2d_nhwc_kernel<T, V, 2, 2, 1, 1, 4, 4><<<grid, kThreads, 0, stream>>>(xp, fp, yp, p);
  } else if (f44 && p.upx == 1 && p.upy == 1 && p.downx == 2 && p.downy == 2) {
    upfirdn2d_nhwc_kernel<T, V, 1, 1, 2, 2, 4, 4><<<grid, kThreads, 0, stream>>>(xp, fp, yp, p);
  } else {
    upfirdn2d_nhwc_kernel<T, V, 0, 0, 0, 0, 0, 0><<<grid, kThreads, 0, stream>>>(xp, fp, yp, p);
  }
}

}  // namespace

// x: dense channels-last [N, C, H, W]; f: contiguous [fh, fw] correlation filter in x's op-math
// type; y: dense channels-last [N, C, OH, OW], allocated by the caller. Sizes checked by the caller.
void upfirdn2d_nhwc_cuda(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, int64_t upx, int64_t upy,
                         int64_t downx, int64_t downy, int64_t px0, int64_t py0) {
  NhwcParams p;
  p.N = (int)x.size(0); p.C = (int)x.size(1); p.H = (int)x.size(2); p.W = (int)x.size(3);
  p.OH = (int)y.size(2); p.OW = (int)y.size(3); p.fh = (int)f.size(0); p.fw = (int)f.size(1);
  p.upx = (int)upx; p.upy = (int)upy; p.downx = (int)downx; p.downy = (int)downy;
  p.px0 = (int)px0; p.py0 = (int)py0;
  TORCH_CHECK(x.size(1) < (1LL << 30) && x.size(0) < (1LL << 31), "upfirdn2d: tensor too large for the CUDA kernel");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_nhwc_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const A* fp = f.data_ptr<A>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    if (p.C % V == 0 && aligned(xp) && aligned(yp)) {
      launch_nhwc<scalar_t, V>(xp, fp, yp, p, stream);
    } else {
      launch_nhwc<scalar_t, 1>(xp, fp, yp, p, stream);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lgfa

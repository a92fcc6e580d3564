// upfirdn2d for contiguous [N, C, H, W] tensors (channels-last ones: upfirdn2d_nhwc.cu); the
// operation: upfirdn2d.cu.
//
// One block computes a TH x TW tile of outputs for one (n, c) plane at a time: it stages the
// input window that the tile needs in shared memory (zeros outside the image, which also
// implements padding and cropping) and then every thread computes outputs from shared memory.
// The plain 4x4 FIR filter (up = down = 1) skips the staging (fir_direct_kernel): it reads each
// input sample about once from global memory through L1, which the staging loop could not match.

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace lgfa {
namespace {

struct UfdParams {
  int64_t nc;
  int H, W, OH, OW;
  int fh, fw;
  int upx, upy, downx, downy;
  int px0, py0;
  int tw_log2, th;         // output tile: (1 << tw_log2) wide, th high
  int tiles_x;
};

__device__ __forceinline__ int floor_div(int a, int b) {  // b > 0
  int q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
__device__ __forceinline__ int ceil_div_signed(int a, int b) { return -floor_div(-a, b); }
__device__ __forceinline__ int pos_mod(int a, int b) {
  int r = a % b;
  return r < 0 ? r + b : r;
}

constexpr int kThreads = 256;
constexpr int kSmemLimit = 48 * 1024;

// Template parameters UPX..FW: compile-time values for the common StyleGAN cases (so the tap
// loops unroll and index arithmetic becomes shifts/masks), or 0 = read from p at run time.
template <typename T, int UPX, int UPY, int DNX, int DNY, int FH, int FW>
__global__ void __launch_bounds__(kThreads) upfirdn2d_kernel(
    const T* __restrict__ x, const at::opmath_type<T>* __restrict__ f, T* __restrict__ y, UfdParams p) {
  using A = at::opmath_type<T>;
  extern __shared__ unsigned char smem_raw[];
  const int upx = UPX ? UPX : p.upx, upy = UPY ? UPY : p.upy;
  const int dnx = DNX ? DNX : p.downx, dny = DNY ? DNY : p.downy;
  const int fh = FH ? FH : p.fh, fw = FW ? FW : p.fw;
  A* s_f = reinterpret_cast<A*>(smem_raw);
  A* s_x = s_f + fh * fw;

  const int tw = 1 << p.tw_log2;
  const int tile_x = blockIdx.x % p.tiles_x;
  const int tile_y = blockIdx.x / p.tiles_x;
  const int ox0 = tile_x * tw, oy0 = tile_y * p.th;
  const int ox_end = min(ox0 + tw, p.OW), oy_end = min(oy0 + p.th, p.OH);

  // Input window (in input pixel coordinates) that this tile reads.
  const int ix_lo = ceil_div_signed(ox0 * dnx - p.px0, upx);
  const int ix_hi = floor_div((ox_end - 1) * dnx + fw - 1 - p.px0, upx);
  const int iy_lo = ceil_div_signed(oy0 * dny - p.py0, upy);
  const int iy_hi = floor_div((oy_end - 1) * dny + fh - 1 - p.py0, upy);
  const int win_w = max(ix_hi - ix_lo + 1, 0);
  const int win_h = max(iy_hi - iy_lo + 1, 0);

  for (int i = threadIdx.x; i < fh * fw; i += kThreads) s_f[i] = f[i];

  for (int64_t nc = blockIdx.z; nc < p.nc; nc += gridDim.z) {
    const T* xp = x + nc * p.H * p.W;
    T* yp = y + nc * p.OH * p.OW;
    __syncthreads();  // previous plane's reads of s_x are done
    for (int idx = threadIdx.x; idx < win_w * win_h; idx += kThreads) {
      const int r = idx / win_w, c = idx - r * win_w;
      const int iy = iy_lo + r, ix = ix_lo + c;
      A v = A(0);
      if (iy >= 0 && iy < p.H && ix >= 0 && ix < p.W) v = static_cast<A>(xp[(int64_t)iy * p.W + ix]);
      s_x[idx] = v;
    }
    __syncthreads();
    // Compile-time variants: a thread's outputs share one column and rows that step by
    // kThreads / tw (even), so with up <= 2 its tap phases (i0, j0) are fixed; its taps are
    // gathered into registers once.
    constexpr bool kSpec = UPX > 0 && UPY > 0 && FH > 0 && FW > 0;
    constexpr int KH = kSpec ? (FH + UPY - 1) / UPY : 1, KW = kSpec ? (FW + UPX - 1) / UPX : 1;
    constexpr bool kAllTaps = kSpec && FH % (UPY ? UPY : 1) == 0 && FW % (UPX ? UPX : 1) == 0;
    A ft[KH * KW];
    if constexpr (kSpec) {
      const int uy = (oy0 + (threadIdx.x >> p.tw_log2)) * dny - p.py0;
      const int ux = (ox0 + (threadIdx.x & (tw - 1))) * dnx - p.px0;
      const int i0 = pos_mod(-uy, upy), j0 = pos_mod(-ux, upx);
#pragma unroll
      for (int ki = 0; ki < KH; ++ki)
#pragma unroll
        for (int kj = 0; kj < KW; ++kj) {
          const int i = i0 + ki * UPY, j = j0 + kj * UPX;
          ft[ki * KW + kj] = (i < FH && j < FW) ? s_f[i * FW + j] : A(0);
        }
    }
    for (int idx = threadIdx.x; idx < (p.th << p.tw_log2); idx += kThreads) {
      const int oy = oy0 + (idx >> p.tw_log2);
      const int ox = ox0 + (idx & (tw - 1));
      if (oy >= oy_end || ox >= ox_end) continue;
      const int uy = oy * dny - p.py0;  // upsampled coordinate of tap i = 0
      const int ux = ox * dnx - p.px0;
      // First tap landing on a real (non-inserted) sample; uy + i0 is then a multiple of upy.
      const int i0 = UPY == 1 ? 0 : pos_mod(-uy, upy);
      const int j0 = UPX == 1 ? 0 : pos_mod(-ux, upx);
      const int r0 = floor_div(uy + i0, upy) - iy_lo;
      const int c0 = floor_div(ux + j0, upx) - ix_lo;
      const A* sx = s_x + r0 * win_w + c0;
      A acc = A(0);
      if constexpr (kSpec) {
#pragma unroll
        for (int ki = 0; ki < KH; ++ki)
#pragma unroll
          for (int kj = 0; kj < KW; ++kj)
            // (taps past the filter edge would read past the window: skip them)
            if (kAllTaps || ((i0 + ki * UPY) < FH && (j0 + kj * UPX) < FW))
              acc += sx[ki * win_w + kj] * ft[ki * KW + kj];
      } else {
        for (int i = i0, r = 0; i < fh; i += upy, ++r) {
          const A* srow = sx + r * win_w;
          const A* frow = s_f + i * fw;
          for (int j = j0, c = 0; j < fw; j += upx, ++c) acc += srow[c] * frow[j];
        }
      }
      yp[(int64_t)oy * p.OW + ox] = static_cast<T>(acc);
    }
  }
}

// Plain FIR filter (up = down = 1) with a compile-time filter: no shared-memory staging. A warp
// owns 32 * CPL consecutive output columns and RPT consecutive rows; every lane walks its CPL
// columns down the input, reading each input row once: one coalesced load of CPL adjacent samples
// per lane, plus the halo to the right of the warp, the horizontal neighbours coming from the other
// lanes by shuffles. Each row is added into the FH outputs it feeds (accumulators rotate). All the
// rows' loads are issued before the arithmetic, so RPT + FH - 1 loads per lane are in flight.
// CPL = 2 (pairs: one 4-byte load per lane for 16-bit types) needs the host to check that pairs
// never straddle the image edge or an alignment boundary (even W and OW, aligned pointers); with an
// odd left padding (SH = 1, e.g. the backward of StyleGAN's filter2d) a lane loads the pair that
// starts one column left of its first tap, so that loads stay on even columns.
// Out-of-image samples read as zero (padding and cropping).
template <typename T, int CPL>
struct alignas(sizeof(T) * CPL) Cols {
  T v[CPL];
};

template <typename T, int FH, int FW, int RPT, int CPL, int SH>
__global__ void __launch_bounds__(kThreads) fir_direct_kernel(
    const T* __restrict__ x, const at::opmath_type<T>* __restrict__ f, T* __restrict__ y, UfdParams p) {
  static_assert(CPL == 1 || CPL == 2, "one or two columns per lane");
  static_assert(SH == 0 || (SH == 1 && CPL == 2), "a shift only aligns pairs");
  constexpr int kSpan = CPL + FW - 1;                       // input samples a lane's outputs read per row
  constexpr int kHaloLanes = (SH + FW - 1 + CPL - 1) / CPL;  // lanes that also load right of the warp
  static_assert(kHaloLanes <= 32, "filter width must fit in a warp's halo");
  using A = at::opmath_type<T>;
  using In = Cols<T, CPL>;
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31;
  const int ox = (blockIdx.x * 32 + lane) * CPL;   // first output column of this lane
  const int oy_a = (blockIdx.y * kWarps + (threadIdx.x >> 5)) * RPT;
  if (oy_a >= p.OH) return;  // whole warps only: the shuffles below need every lane
  A fr[FH * FW];
#pragma unroll
  for (int k = 0; k < FH * FW; ++k) fr[k] = f[k];
  const int n = min(RPT, p.OH - oy_a);
  const int ix = ox - p.px0 - SH;                  // first input column this lane loads (tap 0 of ox is ix + SH)
  const int hx = ix + 32 * CPL;                    // a halo lane reads the samples 32 lanes to its right
  // With CPL = 2 the host guarantees even ix and W: a pair is wholly inside or wholly outside.
  const bool col_ok = ix >= 0 && ix < p.W;
  const bool halo_ok = lane < kHaloLanes && hx >= 0 && hx < p.W;
  In zero;
#pragma unroll
  for (int c = 0; c < CPL; ++c) zero.v[c] = T(0);
  for (int64_t nc = blockIdx.z; nc < p.nc; nc += gridDim.z) {
    const T* xp = x + nc * p.H * p.W;
    T* yp = y + nc * p.OH * p.OW;
    constexpr int kIn = RPT + FH - 1;
    In main_in[kIn], halo_in[kIn];
#pragma unroll
    for (int q = 0; q < kIn; ++q) {
      const int iy = oy_a + q - p.py0;
      const bool row_ok = iy >= 0 && iy < p.H && q < n + FH - 1;
      const T* row = xp + (int64_t)iy * p.W;
      main_in[q] = (row_ok && col_ok) ? *reinterpret_cast<const In*>(row + ix) : zero;
      halo_in[q] = (row_ok && halo_ok) ? *reinterpret_cast<const In*>(row + hx) : zero;
    }
    A acc[FH][CPL];
#pragma unroll
    for (int k = 0; k < FH; ++k)
#pragma unroll
      for (int c = 0; c < CPL; ++c) acc[k][c] = A(0);
#pragma unroll
    for (int q = 0; q < kIn; ++q) {  // input row q feeds outputs q-FH+1 .. q
      // v[e]: the sample e columns right of tap 0 (ix + SH + e); it lives in lane
      // (lane + (e + SH) / CPL), slot (e + SH) % CPL
      A v[kSpan];
#pragma unroll
      for (int e = 0; e < kSpan; ++e) {
        const int at = e + SH;
        const A own = static_cast<A>(main_in[q].v[at % CPL]);
        if (at < CPL) {
          v[e] = own;
        } else {
          const A from_lane = __shfl_down_sync(0xffffffffu, own, at / CPL);
          const A from_halo = __shfl_sync(0xffffffffu, static_cast<A>(halo_in[q].v[at % CPL]), (lane + at / CPL) & 31);
          v[e] = lane + at / CPL < 32 ? from_lane : from_halo;
        }
      }
#pragma unroll
      for (int k = 0; k < FH; ++k) {  // acc[k] is output row (q - FH + 1 + k), tap row FH-1-k
#pragma unroll
        for (int c = 0; c < CPL; ++c)
#pragma unroll
          for (int j = 0; j < FW; ++j) acc[k][c] += v[c + j] * fr[(FH - 1 - k) * FW + j];
      }
      const int o = q - FH + 1;
      if (o >= 0 && o < n) {
        T* out = yp + (int64_t)(oy_a + o) * p.OW + ox;
        if (CPL == 2 && ox + 1 < p.OW) {  // OW even (host): the pair store is aligned
          In pair;
#pragma unroll
          for (int c = 0; c < CPL; ++c) pair.v[c] = static_cast<T>(acc[0][c]);
          *reinterpret_cast<In*>(out) = pair;
        } else {
#pragma unroll
          for (int c = 0; c < CPL; ++c)
            if (ox + c < p.OW) out[c] = static_cast<T>(acc[0][c]);
        }
      }
#pragma unroll
      for (int k = 0; k + 1 < FH; ++k)
#pragma unroll
        for (int c = 0; c < CPL; ++c) acc[k][c] = acc[k + 1][c];
#pragma unroll
      for (int c = 0; c < CPL; ++c) acc[FH - 1][c] = A(0);
    }
  }
}

int window(int tile, int down, int fsize, int up) {  // max input samples a tile can touch
  const int span = (tile - 1) * down + fsize;
  return (span + up - 1) / up;
}

}  // namespace

// x: contiguous [N, C, H, W]; f: contiguous [fh, fw] correlation filter in x's op-math type; y:
// contiguous [N, C, OH, OW], allocated by the caller. Sizes checked by the caller (upfirdn2d.cu).
void upfirdn2d_nchw_cuda(const at::Tensor& x, const at::Tensor& f, at::Tensor& y, int64_t upx, int64_t upy,
                         int64_t downx, int64_t downy, int64_t px0, int64_t py0) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t fh = f.size(0), fw = f.size(1), OH = y.size(2), OW = y.size(3);
  const auto opmath = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;

  // Specialised kernels for the StyleGAN cases with a 4x4 filter ([1,3,3,1] outer product):
  // filter2d, 2x upsampling and 2x downsampling; everything else uses the generic kernel.
  const bool f44 = fh == 4 && fw == 4;
  const int variant = !f44 ? 0
                    : (upx == 1 && upy == 1 && downx == 1 && downy == 1) ? 1
                    : (upx == 2 && upy == 2 && downx == 1 && downy == 1) ? 2
                    : (upx == 1 && upy == 1 && downx == 2 && downy == 2) ? 3 : 0;
  const size_t esize = opmath == at::kDouble ? 8 : 4;
  // Largest tile (64 x 32 outputs) whose input window fits in 48 KB of shared memory.
  int tw_log2 = 6, th = 32;
  auto smem_for = [&](int tw, int h) {
    return (size_t)(window(tw, (int)downx, (int)fw, (int)upx) * (size_t)window(h, (int)downy, (int)fh, (int)upy) +
                    fh * fw) * esize;
  };
  // Small outputs: do not allocate tiles far larger than the image.
  while (tw_log2 > 3 && (1 << (tw_log2 - 1)) >= OW) --tw_log2;
  while (th > 8 && th / 2 >= OH) th /= 2;
  while (smem_for(1 << tw_log2, th) > (size_t)kSmemLimit && (tw_log2 > 0 || th > 1)) {
    if ((1 << tw_log2) >= th && tw_log2 > 0) --tw_log2; else th /= 2;
  }
  const size_t smem = smem_for(1 << tw_log2, th);
  TORCH_CHECK(smem <= (size_t)kSmemLimit, "upfirdn2d: filter of ", fh, "x", fw,
              " is too large for the CUDA kernel; use impl='ref'");

  UfdParams p;
  p.nc = N * C; p.H = (int)H; p.W = (int)W; p.OH = (int)OH; p.OW = (int)OW;
  p.fh = (int)fh; p.fw = (int)fw; p.upx = (int)upx; p.upy = (int)upy; p.downx = (int)downx;
  p.downy = (int)downy; p.px0 = (int)px0; p.py0 = (int)py0; p.tw_log2 = tw_log2; p.th = th;
  p.tiles_x = (int)((OW + (1 << tw_log2) - 1) >> tw_log2);
  const int64_t tiles_y = (OH + th - 1) / th;
  const int64_t tiles = tiles_y * p.tiles_x;
  TORCH_CHECK(tiles < (1LL << 31), "upfirdn2d: output too large for the CUDA kernel");
  dim3 grid((unsigned)tiles, 1, (unsigned)std::min<int64_t>(p.nc, 65535));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const A* fp = f.data_ptr<A>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    switch (variant) {
      case 1: {
        constexpr int kRows = 16;  // output rows per thread (8 and 32 are slower)
        const int64_t row_blocks = (OH + kRows * (kThreads / 32) - 1) / (kRows * (kThreads / 32));
        TORCH_CHECK(row_blocks <= 65535, "upfirdn2d: output too tall for the CUDA kernel");
        const unsigned planes = (unsigned)std::min<int64_t>(p.nc, 65535);
        // Pairs of columns per lane where no pair can straddle the image edge or a pair boundary:
        // even W and OW keep every pair's first column even (shifted by one for an odd px0), and
        // aligned planes keep it aligned.
        const bool pairs = W % 2 == 0 && OW % 2 == 0 &&
                           reinterpret_cast<uintptr_t>(xp) % (2 * sizeof(scalar_t)) == 0 &&
                           reinterpret_cast<uintptr_t>(yp) % (2 * sizeof(scalar_t)) == 0;
        if (pairs && px0 % 2 == 0) {
          dim3 g((unsigned)((OW + 63) / 64), (unsigned)row_blocks, planes);
          fir_direct_kernel<scalar_t, 4, 4, kRows, 2, 0><<<g, kThreads, 0, stream>>>(xp, fp, yp, p);
        } else if (pairs) {
          dim3 g((unsigned)((OW + 63) / 64), (unsigned)row_blocks, planes);
          fir_direct_kernel<scalar_t, 4, 4, kRows, 2, 1><<<g, kThreads, 0, stream>>>(xp, fp, yp, p);
        } else {
          dim3 g((unsigned)((OW + 31) / 32), (unsigned)row_blocks, planes);
          fir_direct_kernel<scalar_t, 4, 4, kRows, 1, 0><<<g, kThreads, 0, stream>>>(xp, fp, yp, p);
        }
        break;
      }
      case 2: upfirdn2d_kernel<scalar_t, 2, 2, 1, 1, 4, 4><<<grid, kThreads, smem, stream>>>(xp, fp, yp, p); break;
      case 3: upfirdn2d_kernel<scalar_t, 1, 1, 2, 2, 4, 4><<<grid, kThreads, smem, stream>>>(xp, fp, yp, p); break;
      default: upfirdn2d_kernel<scalar_t, 0, 0, 0, 0, 0, 0><<<grid, kThreads, smem, stream>>>(xp, fp, yp, p); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lgfa

// Python bindings of the lgfa CUDA ops (built lazily by src/ops/build.py).
#include <torch/extension.h>

namespace lgfa {
at::Tensor bias_act_cuda(at::Tensor x, at::Tensor b, at::Tensor g, int64_t dim,
                            int64_t act, int64_t order, double alpha, double gain, double clamp);
at::Tensor bias_act_epilogue_cuda(at::Tensor x, at::Tensor b, at::Tensor s, at::Tensor a,
                                  int64_t act, double alpha, double gain, double clamp);
at::Tensor upfirdn2d_cuda(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx,
                             int64_t downy, int64_t px0, int64_t px1, int64_t py0, int64_t py1);
}  // namespace lgfa

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &lgfa::bias_act_cuda,
        "y = clamp(act(x + b) * gain) (order 0) or g * d^order y / dx^order (orders 1, 2)");
  m.def("bias_act_epilogue", &lgfa::bias_act_epilogue_cuda,
        "forward only: y = clamp(act(x * s[n, c] + a + b[c]) * gain) for x [N, C, *spatial]");
  m.def("upfirdn2d", &lgfa::upfirdn2d_cuda,
        "upsample (zero insertion), pad/crop, 2D FIR correlation with f, downsample");
}

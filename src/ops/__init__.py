"""Custom ops for StyleGAN2: fused bias+activation and upfirdn2d, each with a pure-PyTorch
reference and lazily built CUDA kernels (see src.ops.policy for how the implementation is chosen).

    from src.ops import bias_act, upfirdn2d, configure
    y = bias_act.bias_act(x, b, act='lrelu', clamp=256)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y = upfirdn2d.upsample2d(x, f)
"""

from src.ops import bias_act, upfirdn2d
from src.ops.build import OpsBuildError
from src.ops.policy import configure, get_config

__all__ = ["bias_act", "upfirdn2d", "configure", "get_config", "OpsBuildError"]

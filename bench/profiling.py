"""What a profiled loop spent its time on: GPU kernel time against wall time (busy share), kernel
launches and host syncs per iteration, the top kernels, and the aten calls (with input shapes) that
launched the most GPU time. Shared by the training benches' ``--profile`` options."""
from __future__ import annotations

_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")
_COPIES = ("cudaMemcpyAsync",)


def activities() -> list:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU, ProfilerActivity.CUDA]


def print_summary(prof, iters: int, wall_ms: float, label: str, top: int = 14) -> dict:
    """Print the summary of ``prof`` (a finished ``torch.profiler.profile`` over ``iters`` iterations
    that took ``wall_ms`` each) and return its figures per iteration."""
    avg = prof.key_averages()
    syncs = sum(e.count for e in avg if e.key in _SYNCS) / iters  # the host waits for the GPU
    copies = sum(e.count for e in avg if e.key in _COPIES) / iters  # any direction; from pageable memory they wait too
    launch_calls = sum(e.count for e in avg if e.key in _LAUNCHES) / iters
    events = [e for e in avg if e.device_type.name == "CUDA"]
    kernel_ms = sum(e.self_device_time_total for e in events) / 1000 / iters
    kernels = sum(e.count for e in events) / iters
    print(f"profile ({label}): wall {wall_ms:.1f} ms/iter (profiled), GPU kernels {kernel_ms:.1f} ms/iter "
          f"({100 * kernel_ms / wall_ms:.0f}% busy), {kernels:.0f} kernels/iter, {launch_calls:.0f} launch calls/iter, "
          f"{syncs:.1f} host syncs/iter (synchronize, item), {copies:.1f} memory copies/iter")
    host = sorted((e for e in avg if e.device_type.name == "CPU" and e.key.startswith("aten::")),
                  key=lambda e: -e.self_cpu_time_total)[:8]
    print("  host time by op: " + ", ".join(f"{e.key[6:]} {e.self_cpu_time_total / 1000 / iters:.1f} ms" for e in host))
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"  {e.self_device_time_total / 1000 / iters:7.2f} ms  x{e.count / iters:6.1f}  {e.key[:90]}")
    # which calls launched that GPU time (eager code only: a graph replay hides its ops)
    ops = [e for e in prof.key_averages(group_by_input_shape=True)
           if e.device_type.name == "CPU" and e.key.startswith("aten::") and e.self_device_time_total > 0]
    if ops:
        print("  GPU time by op and input shapes:")
        for e in sorted(ops, key=lambda e: -e.self_device_time_total)[:top]:
            print(f"  {e.self_device_time_total / 1000 / iters:7.2f} ms  x{e.count / iters:6.1f}  {e.key[6:]} "
                  f"{str(e.input_shapes)[:110]}")
    return {"wall_ms": wall_ms, "kernel_ms": kernel_ms, "kernels": kernels, "launch_calls": launch_calls,
            "syncs": syncs, "copies": copies}

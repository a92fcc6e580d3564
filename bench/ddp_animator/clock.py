"""Named time intervals of the benchmark's steps (CUDA events or perf_counter) and the hooks that
split the forward into generator, loss CLIP and input CLIP (see measure.py for the method)."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

import torch
import torch.nn as nn

PHASES = ("generator", "clip_loss", "clip_input", "forward", "backward", "optimizer", "step")


class Clock:
    """Named intervals per (phase, step): CUDA events on the current stream, or perf_counter on CPU.

    Nothing is synchronised while recording; ``collect`` synchronises once and sums the intervals
    of each name within a step (the generator runs twice per step: input face and frames).
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.key: Optional[tuple[str, int]] = None  # (phase, step) while recording
        self.records: list[tuple[tuple[str, int], str, Any, Any]] = []
        self._open: dict[str, list[tuple[tuple[str, int], Any]]] = {}

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self, name: str) -> None:
        if self.key is not None:
            self._open.setdefault(name, []).append((self.key, self._now()))

    def stop(self, name: str) -> None:
        stack = self._open.get(name)
        if stack:
            key, begin = stack.pop()
            self.records.append((key, name, begin, self._now()))

    @contextlib.contextmanager
    def span(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def collect(self) -> dict[str, dict[str, list[float]]]:
        """{phase: {name: [ms per step]}} (0 where a name did not occur in a step); clears the records."""
        if self.cuda:
            torch.cuda.synchronize()
        acc: dict[str, dict[str, dict[int, float]]] = {}
        steps: dict[str, set[int]] = {}
        for (phase, step), name, begin, end in self.records:
            ms = begin.elapsed_time(end) if self.cuda else (end - begin) * 1000.0
            slot = acc.setdefault(phase, {}).setdefault(name, {})
            slot[step] = slot.get(step, 0.0) + ms
            steps.setdefault(phase, set()).add(step)
        self.records, self._open = [], {}
        return {phase: {name: [acc[phase].get(name, {}).get(s, 0.0) for s in sorted(steps[phase])]
                        for name in PHASES} for phase in acc}


def instrument(module: nn.Module, clock: Clock) -> None:
    """Time the generator (mapping + synthesis forward hooks) and the CLIPs' encode_image."""
    for sub in (module.generator.mapping, module.generator.synthesis):
        sub.register_forward_pre_hook(lambda m, a: clock.start("generator"))
        sub.register_forward_hook(lambda m, a, o: clock.stop("generator"))
    seen = set()
    for enc in (module.clip, module.loss_clip):
        if enc is None or id(enc) in seen:
            continue
        seen.add(id(enc))
        original = enc.encode_image

        def timed(img, *args, _original=original, **kwargs):
            # the loss CLIP runs with grad (it back-propagates into the last frame); the
            # animator's input encoder runs under no_grad
            with clock.span("clip_loss" if torch.is_grad_enabled() else "clip_input"):
                return _original(img, *args, **kwargs)

        enc.encode_image = timed  # instance attribute: shadows the method for this object only

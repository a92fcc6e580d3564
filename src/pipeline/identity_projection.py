"""The identity projection of a FaceAnimator: the projection reader, its Jacobian at a face, and the
projection of the offsets (``src/identity/projection.py`` has the maths). A mixin of
:class:`~src.pipeline.face_animator.FaceAnimator` (it uses its ``generator``, ``animator``,
``noise_mode``, ``inference_cfg`` and ``device``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from src.utils.errors import UserError


class IdentityProjection:
    """projection_reader(), identity_jacobian(w) and project_identity(w, offsets, strength)."""

    def projection_reader(self) -> nn.Module:
        """The identity-attribute reader of the inference projection (config.projection_reader), loaded
        on first use and cached outside the module tree (it is not a weight of the animator)."""
        reader = self.__dict__.get("_projection_reader")
        if reader is None:
            path = self.inference_cfg.projection_reader
            if not path:
                raise UserError("identity projection needs model.inference.projection_reader (an identity-attribute reader; "
                                "experiment=embedded_identity_reader trains one)")
            from src.identity.reader import load_identity_reader

            # the first use may come under torch.inference_mode() (Lightning's validation): weights
            # loaded there would be inference tensors, which the Jacobian's backward cannot use
            with torch.inference_mode(False):
                reader = load_identity_reader(path, device=next(self.animator.parameters()).device)
            self.__dict__["_projection_reader"] = reader
        return reader

    def synthesis_tape(self, w_input: torch.Tensor):
        """A :class:`~src.pipeline.jacobian.SynthesisTape` of the faces w_input [N, L, C] (their image
        and what the Jacobian needs, in one forward pass), or None where the generator or the
        device needs autograd's Jacobian (fp16 blocks on a GPU, random noise, other architectures)."""
        from src.pipeline.jacobian import SynthesisTape

        if not self._tape_supported():
            return None
        return SynthesisTape(self.generator.synthesis, w_input.to(self.device).float(), self.noise_mode)

    def _tape_supported(self) -> bool:
        from src.pipeline.jacobian import supports

        return supports(self.generator.synthesis, self.noise_mode, self.device)

    def identity_jacobian(self, w_input: torch.Tensor, tape=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(J [N, A, L*C], shown [N, A] bool) of the projection reader at faces w_input [N, L, C]: the
        first-order effect of a W+ offset on each identity reading, and which readings each face shows
        (the rows of readings a face does not show are zero). It depends on the face alone, so one
        computation serves every prompt. tape: ``self.synthesis_tape(w_input)`` when already run;
        without one the faces go one at a time (the memory of one face's pass, whatever N)."""
        from src.identity.projection import identity_jacobian as autograd_jacobian
        from src.pipeline.jacobian import identity_jacobian as tape_jacobian

        reader = self.projection_reader()
        w = w_input.to(self.device).float()
        args = (self.generator.synthesis, reader)
        kw = dict(layer_mask=self.animator.layer_mask, noise_mode=self.noise_mode, shown=reader.shown)
        if tape is not None:
            jac, readings = tape_jacobian(*args, w, tape=tape, **kw)
        elif self._tape_supported():
            parts = [tape_jacobian(*args, face[None], tape=self.synthesis_tape(face[None]), **kw) for face in w]
            jac, readings = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            render = lambda ws: self.generator.synthesis(ws, noise_mode=self.noise_mode)  # noqa: E731
            jac, readings = autograd_jacobian(render, reader, w, self.animator.layer_mask)
        return jac, reader.shown(readings)

    def project_identity(self, w_input: torch.Tensor, offsets: torch.Tensor, strength: float,
                         jacobian: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """offsets [N,T,L,C] without ``strength`` of their first-order effect on the identity readings
        of each face w_input [N,L,C] (readings a face does not show are left free)."""
        from src.identity.projection import project_offsets

        jac, shown = jacobian if jacobian is not None else self.identity_jacobian(w_input)
        if jac.shape[0] != offsets.shape[0]:
            raise UserError(f"identity Jacobian of {jac.shape[0]} faces for {offsets.shape[0]} animations")
        return project_offsets(offsets, jac, strength, rows=shown)

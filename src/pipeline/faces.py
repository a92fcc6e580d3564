"""The faces a FaceAnimator animates, from what a user gives: a seed, a latent (tensor or file) or
an image (projected into the generator), with a warning when the input lies outside what the
generator draws; and new faces near the generator's average face (the authors' diverse samples).
A mixin of :class:`~src.pipeline.face_animator.FaceAnimator` (it uses its ``generator``,
``device``, ``domain`` and ``sample_latents``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import torch

from src.utils.errors import UserError
from src.utils.io import check_input_file
from src.utils.log import warn

#: latent_distance above which a given latent is warned about (its own faces: mean ~1, max ~2)
LATENT_WARN_SCORE = 3.0
#: PSNR of a projected image below which it is warned about: after 100 steps, renders of the embedded
#: generator reach 29.8-33.9 dB, photos of people 20.5-22.1 dB
PROJECTION_WARN_PSNR = 26.0


class FaceInputs:
    """face_latent(face) -> W+ [1, L, C], and the checks of latents and projections."""

    def face_latent(self, face: Any = None, seed: Optional[int] = None, projection_steps: int = 300,
                    progress: bool = False, check_latent: bool = True) -> torch.Tensor:
        """W+ [1,L,C] of a face: a latent tensor (W [C] / [1,C], W+ [L,C] / [1,L,C]), a latent file
        (.npy/.npz/.pt/.safetensors), an image tensor [3,H,W] / [1,3,H,W] in [-1,1] or image file
        (projected into the generator), or None (the face of ``seed``, default 0). ``check_latent``:
        warn about a given latent far from the generator's (off for one this method returned before)."""
        from src.inversion.projection import latent_from_tensor, load_latent, project

        if face is None:
            return self.sample_latents(1, seed=0 if seed is None else int(seed))
        label = "the image"
        if isinstance(face, (str, Path)):
            suffix = Path(face).suffix.lower()
            if suffix in (".npy", ".npz", ".pt", ".pth", ".safetensors"):
                path = check_input_file(face, "latent")
                ws = load_latent(path, self.generator)
                return self.checked_latent(ws.to(self.device), str(face))
            from src.data.images import load_image

            label, face = str(face), load_image(check_input_file(face, "image"))
        if not isinstance(face, torch.Tensor):
            raise UserError(f"a face is a latent, an image or a file path, not {type(face).__name__}")
        if face.shape[-3:-2] == (3,) and face.dim() in (3, 4):  # an image
            image = (face[None] if face.dim() == 3 else face).to(self.device).float()
            # optimisation needs gradients: outside no_grad; LPIPS-VGG when installed, else pixels only
            with torch.enable_grad():
                result = project(self.generator, image, steps=projection_steps, progress=progress)
            if progress:
                print(f"projected {label}: PSNR {result['psnr']:.2f} dB, MSE {result['mse']:.5f}", file=sys.stderr)
            self.check_projection(float(result["psnr"]), label)
            return result["ws"].detach()
        ws = latent_from_tensor(face, self.generator).to(self.device)
        return self.checked_latent(ws, "the latent") if check_latent else ws

    @torch.no_grad()
    def sample_near_average(self, n: int, seed: int = 0, scale: float = 0.1) -> torch.Tensor:
        """W+ [n,num_ws,w_dim] of new faces near the average face, as the authors' diverse-samples
        tool draws them: z = scale * N(0, I) + w_avg (the mapping's tracked mean W, added in z
        space), mapped with no truncation, each face's w on every W+ layer. Deterministic for a seed
        (the noise comes from a CPU generator)."""
        G = self.generator
        w_avg = getattr(G.mapping, "w_avg", None)
        if w_avg is None:
            raise UserError("this generator's mapping network tracks no w_avg: faces near the average need one")
        if G.z_dim != w_avg.numel():
            raise UserError(f"faces near the average add w_avg in z space: z_dim {G.z_dim} != w_dim {w_avg.numel()}")
        if int(n) < 1:
            raise UserError(f"the number of faces must be >= 1, got {n}")
        noise = torch.randn(int(n), G.z_dim, generator=torch.Generator().manual_seed(int(seed)))
        z = noise.to(self.device) * float(scale) + w_avg.to(self.device).float()
        return G.mapping(z, torch.zeros(int(n), G.c_dim, device=self.device), truncation_psi=1.0)

    @torch.no_grad()
    def latent_distance(self, ws: torch.Tensor) -> torch.Tensor:
        """Mean squared z-score [N] of latents ws [N,L,C] against the generator's own W distribution
        (per-dimension mean and std of 4,096 mapped samples): about 1 for its faces (at most ~2),
        about 5 for N(0, I) noise in W."""
        stats = self.__dict__.get("_w_stats")
        if stats is None:
            G = self.generator
            z = torch.randn(4096, G.z_dim, generator=torch.Generator().manual_seed(123)).to(self.device)
            w = G.mapping(z, torch.zeros(len(z), G.c_dim, device=self.device), truncation_psi=1.0)[:, 0]
            stats = self.__dict__["_w_stats"] = (w.mean(0), w.std(0).clamp_min(1e-8))
        mean, std = stats
        return ((ws.to(mean.device).float() - mean) / std).pow(2).mean(dim=(-1, -2))

    def check_projection(self, psnr: float, label: str) -> None:
        """A warning when a projected image is far from anything the generator draws."""
        if psnr >= PROJECTION_WARN_PSNR:
            return
        if self.domain.get("name") == "synthetic":
            warn(f"{label} is far from anything this generator draws (PSNR {psnr:.1f} dB; its own faces project to "
                 f"about 30): the embedded default knows only its cartoon faces. For photos, load a face "
                 f"generator (README: Your own faces, generator and CLIP)")
        else:
            warn(f"{label} projects poorly into this generator (PSNR {psnr:.1f} dB): the video shows the generator's "
                 f"nearest face, not this image (align the photo, or raise projection_steps)")

    def checked_latent(self, ws: torch.Tensor, label: str) -> torch.Tensor:
        """ws, with a warning when it lies far from the generator's W distribution (it renders garbage)."""
        score = float(self.latent_distance(ws).max())
        if score > LATENT_WARN_SCORE:
            warn(f"{label} lies far from this generator's latents (mean squared z-score {score:.1f}; its own "
                 f"faces score about 1): expect a distorted face. Use a latent of this generator (seed=, or "
                 f"image= to project a photo)")
        return ws



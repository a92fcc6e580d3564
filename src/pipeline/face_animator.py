"""Inference: one still face plus a sentence becomes a short video of that face doing it.

    from src.pipeline import FaceAnimator

    animator = FaceAnimator.from_pretrained("assets/animator_synthetic.safetensors", device="cpu")
    frames = animator(seed=3, text="The person is winking.", frames=16)          # [T, 3, H, W] in [-1, 1]
    frames = animator(latent_or_image, ["The person is smiling.", "The person is winking."])  # chained
    out = animator.animate(ws, prompts, num_frames=16)          # batched: frames [N, T, 3, H, W], ws, offsets

A :class:`FaceAnimator` holds the frozen generator, the CLIP encoder and the trained recurrent
animator, built from the configuration an animator file records (``src/pipeline/animator_file.py``).
No Lightning here: training (``src/systems/animator.py``) owns a FaceAnimator, adds the losses, and
writes the same file format with :meth:`FaceAnimator.save_pretrained`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from src.config.animator import (CLIP_FINETUNE, AnimatorInferenceConfig, AnimatorNetConfig, AnimatorTrainConfig,
                                 migrate_train_group, typed_group)
from src.networks.animator import (DECAYS, MOTION_TOTALS, RecurrentAnimator, resample_frames,
                                   training_matched_strength)
from src.pipeline import components
from src.pipeline.animator_file import read_animator_file, write_animator_file
from src.pipeline.faces import FaceInputs
from src.ops.graph_cache import GraphCache, module_state, run_chunked
from src.pipeline.identity_projection import IdentityProjection
from src.pipeline.text import prompt_segments
from src.pipeline.text_adapter import TextAdapter, TextAdapting
from src.utils.config import flatten, get_dotted, plain, set_dotted
from src.utils.errors import UserError

#: pixels a generator call renders on a CPU without gradients: 2 frames at 128 px (each frame of a
#: call adds about 27 MB to the peak; 16 frames take 0.65-0.68 s in calls of 2, 4 or 8 on 2 cores)
CPU_PIXELS_PER_CALL = 2 * 128 * 128
#: pixels a generator call renders on a CUDA device without gradients, eager or a graph replay: 8
#: frames at 1024 px (peak memory of a 1024 px video about that of 8 frames, whatever the frame and
#: video count), 512 at 128 px
GPU_PIXELS_PER_CALL = 8 * 1024 * 1024


class FaceAnimator(FaceInputs, IdentityProjection, TextAdapting, nn.Module):
    """The frozen generator and CLIP plus the trained animator; see the module docstring.

    config: the animator's recorded configuration: ``domain`` names the generator, CLIP and prompts;
    the groups ``net`` (architecture), ``train`` (its training frames and whether the text tower was
    fine-tuned) and ``inference`` (the defaults: motion_total, identity_projection, projection_reader)
    follow the dataclasses of ``src/config/animator.py``. In-code ``generator`` / ``clip`` replace the
    files the config names (tests, custom networks).
    """

    def __init__(self, config: Mapping[str, Any], generator: Optional[nn.Module] = None,
                 clip: Optional[nn.Module] = None):
        super().__init__()
        self.config = plain(dict(config))
        self.net_cfg = typed_group(AnimatorNetConfig, self.config.get("net"), "net")
        self.train_cfg = typed_group(AnimatorTrainConfig, migrate_train_group(self.config.get("train")), "train")
        self.inference_cfg = typed_group(AnimatorInferenceConfig, self.config.get("inference"), "inference")
        domain = self.config.get("domain") or {}
        self.domain = domain
        self.prompt_list = components.prompt_list(domain)
        self.noise_mode = str(get_dotted(domain, "generator.noise_mode", "const"))
        self.truncation_psi = float(get_dotted(domain, "generator.truncation_psi", 1.0))
        self.frozen_sources: dict[str, tuple[list[str], nn.Module]] = {}
        self.graphs: Optional[GraphCache] = None  # see use_cuda_graphs
        files: list[str] = []
        if generator is None:
            generator, files = components.load_domain_generator(domain)
        self.generator = components.freeze(generator)
        self.frozen_sources["generator"] = (files, self.generator)
        self.clip = components.build_clip(domain, "clip", clip)
        self.frozen_sources["clip"] = (list(getattr(self.clip, "weight_files", [])), self.clip)
        # the CLIP towers the config fine-tunes are trained (and saved): none, the text tower, or all of it
        finetune = self.train_cfg.clip_finetune
        if finetune not in CLIP_FINETUNE:
            raise UserError(f"model.train.clip_finetune '{finetune}' is not one of {', '.join(CLIP_FINETUNE)}")
        self.clip_params: list[nn.Parameter] = ([] if finetune == "none" else list(self.clip.text_parameters())
                                                if finetune == "text" else list(self.clip.model.parameters()))
        for p in self.clip_params:
            p.requires_grad_(True)
        self.animator = RecurrentAnimator(embed_dim=self.clip.embed_dim, num_ws=self.generator.num_ws,
                                          w_dim=self.generator.w_dim, **asdict(self.net_cfg))
        projection = float(self.inference_cfg.identity_projection or 0.0)
        if not 0.0 <= projection <= 1.0:
            raise UserError(f"identity_projection must be in [0, 1], got {projection}")
        if projection > 0 and not self.inference_cfg.projection_reader:
            raise UserError("identity_projection > 0 needs model.inference.projection_reader "
                            "(an identity-attribute reader)")
        self.text_adapter = TextAdapter(self.clip.embed_dim) if self.inference_cfg.text_adapter else None
        self.frozen_hashes = {name: self.frozen_hash(name) for name in self.frozen_sources}
        # the state-dict keys of the trained weights: the animator's, and the CLIP's fine-tuned towers
        text_ids = {id(p) for p in self.clip_params}
        self._trainable_keys = frozenset({f"animator.{k}" for k in self.animator.state_dict()}
                                         | {f"clip.{n}" for n, p in self.clip.named_parameters() if id(p) in text_ids}
                                         | ({"text_adapter.weight"} if self.text_adapter is not None else set()))

    # ------------------------------------------------------------------ files
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        overrides: Optional[Mapping[str, Any]] = None, hash_check: Optional[str] = None,
                        cuda_graphs: bool = False, channels_last: bool = True,
                        **modules: nn.Module) -> "FaceAnimator":
        """Build from an animator file (an export or a training checkpoint).

        overrides: config entries to change, nested or dotted (e.g. {'domain.generator.checkpoint':
        '/new/G.pkl', 'inference.projection_reader': 'reader.safetensors'}); hash_check (error | warn |
        off; default: the file's setting): what to do when a frozen file's sha256 differs from the one
        the animator was trained with. ``generator=`` /
        ``clip=``: in-code modules instead of the files the config names. cuda_graphs, channels_last:
        see :meth:`use_cuda_graphs`, :meth:`use_channels_last`.
        """
        path = Path(path).expanduser()
        record = read_animator_file(path)
        config = record.hyper_parameters
        for key, value in flatten(plain(dict(overrides or {}))).items():
            set_dotted(config, key, value)
        pipe = cls(config, **modules)
        pipe.check_hashes(record.frozen_hashes, hash_check)
        pipe.load_trainable(record.state_dict, path)
        return pipe.use_cuda_graphs(cuda_graphs).use_channels_last(channels_last).to(device).eval()

    def save_pretrained(self, path: str | Path, relative_to: Optional[str | Path] = None, fp16: bool = False,
                        config: Optional[Mapping[str, Any]] = None) -> Path:
        """Write the trainable weights, the config (``config`` or this pipeline's) and the frozen
        weights' hashes as one export (atomic); see ``write_animator_file``."""
        return write_animator_file(path, config if config is not None else self.config,
                                   self.trainable_state_dict(), self.frozen_hashes, relative_to=relative_to, fp16=fp16)

    def frozen_hash(self, name: str) -> dict[str, Any]:
        files, module = self.frozen_sources[name]
        return components.frozen_record(files, module)

    def check_hashes(self, saved: Mapping[str, Mapping[str, str]], mode: Optional[str] = None) -> list[str]:
        """Compare recorded hashes with the loaded frozen weights (see ``components.compare_hashes``)."""
        return components.compare_hashes(saved, self.frozen_hashes, mode or self.config.get("hash_check") or "error")

    def trainable_keys(self) -> frozenset[str]:
        """State-dict keys of the trained weights: the animator's, and the CLIP towers fine-tuned."""
        return self._trainable_keys

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        keys = self.trainable_keys()
        return {k: v for k, v in self.state_dict().items() if k in keys}

    def load_trainable(self, state: Mapping[str, torch.Tensor], source: Any = "state dict") -> None:
        """Load the trained weights; the frozen ones stay as loaded from their own files."""
        full = self.state_dict()
        missing = sorted(k for k in self.trainable_keys() if k not in state)
        unexpected = sorted(k for k in state if k not in full)
        wrong = sorted(k for k in state if k in full and tuple(state[k].shape) != tuple(full[k].shape))
        if missing or unexpected or wrong:
            what = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                    else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, not {tuple(full[wrong[0]].shape)}")
            raise UserError(f"{source}: weights do not fit the saved config ({what})")
        full.update(state)
        self.load_state_dict(full, strict=True)

    # ------------------------------------------------------------------ faces
    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def sample_latents(self, n: Optional[int] = None, seed: Optional[int] = None,
                       seeds: Optional[Sequence[int] | torch.Tensor] = None) -> torch.Tensor:
        """W+ latents [n,num_ws,w_dim] of random faces: z ~ N(0,I), mapped with the domain's truncation.
        ``seeds``: one seed per sample; else ``seed`` (default 0) seeds all n draws together."""
        G = self.generator
        if seeds is not None:
            from src.stylegan import seeded_ws

            return seeded_ws(G, seeds, self.truncation_psi)
        if n is None:
            raise ValueError("give n or seeds")
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0 if seed is None else int(seed)))
        return G.mapping(z.to(self.device), torch.zeros(n, G.c_dim, device=self.device),
                         truncation_psi=self.truncation_psi)

    def use_cuda_graphs(self, enabled: bool = True, capacity: int = 8) -> "FaceAnimator":
        """Without gradients on a CUDA device, replay CUDA graphs of the generator (one per batch
        size; frames in replays of GPU_PIXELS_PER_CALL pixels) and of the animator's recurrence,
        at most ``capacity`` (src/ops/graph_cache.py); elsewhere all runs eagerly. Returns self."""
        self.graphs = GraphCache(capacity) if enabled else None
        return self

    def use_channels_last(self, enabled: bool = True) -> "FaceAnimator":
        """Run the generator's fp16 blocks with channels-last activations on a GPU
        (``SynthesisNetwork.set_channels_last``: frames equal up to fp16 rounding, faster at 512-1024
        px); no effect on a CPU or on a generator without fp16 blocks. Returns self."""
        synthesis = getattr(self.generator, "synthesis", None)
        if hasattr(synthesis, "set_channels_last"):
            synthesis.set_channels_last(enabled)
        return self

    def graph_state(self) -> tuple:
        """What the recorded graphs depend on beyond their inputs: where the weights live, the fp16
        blocks' dtype and layout."""
        synthesis = getattr(self.generator, "synthesis", None)
        layout = (getattr(synthesis, "half_dtype", None), getattr(synthesis, "channels_last", None))
        return tuple(module_state(m) for m in (self.generator, self.clip, self.animator)) + layout

    def render_image(self, w_input: torch.Tensor) -> torch.Tensor:
        """w_input [N,L,C] -> the input face [N,3,H,W]."""
        return self.render_frames(w_input, max(1, len(w_input)))

    def render_frames(self, ws: torch.Tensor, step: int) -> torch.Tensor:
        """ws [M,L,C] -> images [M,3,H,W] in generator calls of ``step`` images (graph replays, the
        last one padded, once use_cuda_graphs is on and they apply)."""
        G, mode = self.generator, self.noise_mode
        fused = None if step >= len(ws) else False  # chunks compute as the whole batch would
        if self.graphs is not None and self.graphs.applies(ws):
            return run_chunked(self.graphs, lambda w: G.synthesis(w, noise_mode=mode, fused_modconv=fused), ws,
                               step, key=("synthesis", mode, fused), state=self.graph_state())
        if step >= len(ws):
            return G.synthesis(ws, noise_mode=mode, fused_modconv=fused)
        out = None  # filled call by call: the frames are held once, not twice
        for i in range(0, len(ws), step):
            part = G.synthesis(ws[i:i + step], noise_mode=mode, fused_modconv=fused)
            if out is None:
                out = part.new_empty((len(ws), *part.shape[1:]))
            out[i:i + len(part)] = part
        return out

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        """ws [N,T,L,C] -> frames [N,T,3,H,W], all frames in one batched generator call; without
        gradients on a CPU, in calls of at most CPU_PIXELS_PER_CALL pixels (as fast, a fraction of
        the memory: 4 frames a call at 128 px), on a CUDA device in calls of GPU_PIXELS_PER_CALL."""
        n, t = ws.shape[:2]
        flat = ws.reshape(n * t, *ws.shape[2:])
        step = len(flat)
        if not torch.is_grad_enabled():
            pixels = CPU_PIXELS_PER_CALL if flat.device.type == "cpu" else GPU_PIXELS_PER_CALL
            step = pixels // self.generator.img_resolution ** 2
        img = self.render_frames(flat, max(1, step))
        return img.reshape(n, t, *img.shape[1:])

    # ------------------------------------------------------------------ animation
    def resolve_motion_total(self, requested: Optional[str] = None) -> str:
        """``requested`` ('train' | 'paper'), or the recorded setting (default 'train')."""
        motion_total = requested or self.inference_cfg.motion_total or "train"
        if motion_total not in MOTION_TOTALS:
            raise UserError(f"motion_total '{motion_total}' is not one of {', '.join(MOTION_TOTALS)}")
        return motion_total

    def motion_frames(self, num_frames: int) -> int:
        """How many steps the recurrence runs for a ``num_frames`` video under motion_total 'train':
        the file's own frame count (``inference.frames``, what it was tuned and evaluated at), then
        the motion is resampled to ``num_frames``. A 4-frame video plays the same motion as a
        16-frame one, reaching as far, and a 64-frame one plays it slower. Never fewer than asked."""
        return max(num_frames, int(self.inference_cfg.frames))

    @torch.no_grad()
    def animate(self, w_input: torch.Tensor, prompts: Sequence[str] | str, num_frames: int = 16,
                decay: str = "linear", strength: float = 1.0, image: Optional[torch.Tensor] = None, seed: int = 0,
                motion_total: Optional[str] = None, identity_projection: Optional[float] = None,
                identity_jacobian: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                text_adapter: Optional[bool] = None) -> dict[str, torch.Tensor]:
        """Animate N faces w_input [N,L,C] (or [L,C]) with N prompts (one prompt serves all N).

        image [N,3,H,W] in [-1,1]: the face shown to CLIP (default: G.synthesis(w_input)).
        motion_total (default: the recorded one): 'train' scales the step sizes so that the video moves
        as far in total as a training video, then ``strength`` multiplies; a video shorter than the
        file's ``inference.frames`` plays that length's motion resampled (:meth:`motion_frames`), and
        a strength above 1 scales the offsets of the motion at strength 1 (variant 'ours'). 'paper'
        runs the authors' r_t = 0.8 / T * decay(t, T) * strength for T = num_frames.
        identity_projection (default: the recorded one, 0..1): how much of each offset's first-order effect on the face's identity readings is removed.
        identity_jacobian: ``self.identity_jacobian(w_input)`` when already computed.
        text_adapter: read the prompts through the file's text adapter (default: when it has one).
        Returns dict(frames [N,T,3,H,W] in [-1,1], ws [N,T,L,C], offsets [N,T,L,C]).
        """
        if decay not in DECAYS:
            raise UserError(f"decay '{decay}' is not one of {', '.join(DECAYS)}")
        if num_frames < 2:
            raise UserError(f"num_frames must be >= 2, got {num_frames}")
        run_frames, beyond = num_frames, 1.0
        if self.resolve_motion_total(motion_total) == "train":
            run_frames = self.motion_frames(num_frames)
            if strength > 1.0 and self.animator.variant == "ours":
                # past the strength it was trained at, a longer stride of the recurrence drifts off
                # its motion (reach falls); the motion at 1 is extended along its own offsets instead
                strength, beyond = 1.0, float(strength)
            strength = strength * training_matched_strength(run_frames, decay, int(self.train_cfg.frames),
                                                            self.animator.step_base)
        device = self.device
        w_input = w_input.to(device).float()
        if w_input.ndim == 2:
            w_input = w_input[None]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = w_input.shape[0]
        if len(prompts) == 1 and n > 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise UserError(f"{len(prompts)} prompts for {n} faces")
        projection = float(self.inference_cfg.identity_projection or 0.0) if identity_projection is None \
            else float(identity_projection)
        if not 0.0 <= projection <= 1.0:
            raise UserError(f"identity_projection must be in [0, 1], got {projection}")
        was_training = self.animator.training
        self.animator.eval()
        try:
            if image is None:
                image = self.render_image(w_input)
            # a text-only animator (net.image_branch false) never looks at the face
            image_emb = self.clip.encode_image(image.to(device)) if self.animator.image_branch else None
            text_emb = self.adapt_text(self.clip.encode_text(prompts), text_adapter)
            h0 = self.animator.initial_hidden(n, device, torch.float32, torch.Generator().manual_seed(int(seed)))
            embeddings = (text_emb,) if image_emb is None else (text_emb, image_emb)

            def recurrence(w, h, text, image=None):
                return self.animator(w, text, image, run_frames, decay=decay, strength=strength, h0=h)

            key = ("animator", run_frames, decay, float(strength))
            out = recurrence(w_input, h0, *embeddings) if self.graphs is None else self.graphs.run(
                recurrence, w_input, h0, *embeddings, key=key, state=self.graph_state())
            if run_frames != num_frames or beyond != 1.0:  # the motion at the frames asked, extended
                offsets = resample_frames(out["offsets"], num_frames) * beyond
                out = {"offsets": offsets, "ws": w_input[:, None] + offsets}
            if projection > 0:
                offsets = self.project_identity(w_input, out["offsets"], projection, jacobian=identity_jacobian)
                # variant 'ours': frame 0's offset is exactly zero and stays zero, so frame 0 is still the input
                out = {**out, "offsets": offsets, "ws": w_input[:, None] + offsets}
            frames = self.synthesize(out["ws"])
        finally:
            self.animator.train(was_training)
        return dict(frames=frames.clamp(-1, 1), ws=out["ws"], offsets=out["offsets"])

    def __call__(self, face: Any = None, text: Sequence[str] | str = "The person is smiling.", frames: int = 16,
                 strength: float = 1.0, decay: str = "linear", seed: Optional[int] = None, **kw: Any) -> torch.Tensor:
        """One video [T,3,H,W] in [-1,1] of ``face`` (see :meth:`face_latent`; None: the face of
        ``seed``) doing ``text``: a sentence ("The person is smiling, then winking" plays two motions,
        see ``src/pipeline/text.py``) or a list of prompts, played one after the other, each segment
        starting from the previous one's last frame. Other keywords go to :meth:`animate`
        (motion_total, identity_projection, text_adapter) or :meth:`face_latent` (projection_steps, progress,
        check_latent)."""
        face_kw = {k: kw.pop(k) for k in ("projection_steps", "progress", "check_latent") if k in kw}
        prompts = prompt_segments(text, get_dotted(self.domain, "prompts.template", "{}"))
        ws = self.face_latent(face, seed=seed, **face_kw)
        segments = []
        for i, prompt in enumerate(prompts):
            out = self.animate(ws, [prompt], num_frames=frames, decay=decay, strength=strength, **kw)
            video = out["frames"][0]
            segments.append(video if i == 0 else video[1:])  # a chained segment repeats its first frame
            ws = out["ws"][:, -1]
        return torch.cat(segments, dim=0)

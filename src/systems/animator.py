"""LightningModule of the language-guided animator, checkpoint handling and inference.

Frozen parts (generator, CLIP encoders, LPIPS, identity networks) are eval-mode, requires_grad
False, outside the optimiser and OUT of the checkpoint's state_dict: a checkpoint holds the
trainable weights (recurrent animator + mappers, and the CLIP text tower when it is fine-tuned),
the resolved config (hparams) and the sha256 of the frozen weights' files. Loading rebuilds the
frozen parts from their own files and compares the hashes (``hash_check``: error | warn | off).

    module = load_animator("animator.ckpt", device="cuda")
    out = module.animate(ws, ["The person is smiling."], num_frames=16)   # frames [N,T,3,H,W]
"""
from __future__ import annotations

import enum
import hashlib
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn

from src.data.augment import augmented_views, label_preserving_pipe
from src.losses.animator import (contrastive_clip_loss, cosine_clip_loss, endpoint_loss, identity_loss,
                                 latent_reg_loss, lpips_identity_loss, smoothness_loss, total_loss)
from src.networks.animator import DECAYS, MOTION_TOTALS, RecurrentAnimator, training_matched_strength
from src.networks.clip_encoder import ClipEncoder
from src.utils.checkpoint_io import AtomicCheckpointIO
from src.utils.errors import UserError

FROZEN = ("generator", "clip", "loss_clip", "perceptual", "identity_net", "identity_metric_net")
LOSS_KEYS = ("contrastive", "lpips", "smoothness", "endpoint", "latent", "identity", "tau")
CHECKPOINT_FORMAT = "lgfa-animator-1"
H0_SEED_OFFSET = 2**31  # training h_0 seed of a sample = its latent seed + this (see AnimatorModule._h0_seeds)


def _plain(node: Any) -> Any:
    """DictConfig / Enum -> plain python (checkpoints must load with weights_only=True)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    except ImportError:  # omegaconf is a hard dependency of the project; plain dicts still work
        pass
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_plain(v) for v in node)
    return node.value if isinstance(node, enum.Enum) else node


def _get(d: Any, dotted: str, default: Any = None) -> Any:
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur or cur[part] is None:
            return default
        cur = cur[part]
    return cur


def _set(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def sha256_files(files: Sequence[str]) -> str:
    """sha256 over the files' bytes (in the given order)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def sha256_module(module: nn.Module) -> str:
    """sha256 over a module's state_dict (names, dtypes, shapes, values) for in-code modules."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def prompt_list(domain: Mapping) -> list[str]:
    """The domain's prompts: template.format(concept) for every concept."""
    template = _get(domain, "prompts.template", "{}")
    return [template.format(c) for c in (_get(domain, "prompts.concepts", []) or [])]


class AnimatorModule(pl.LightningModule):
    """Trains :class:`RecurrentAnimator` against a frozen StyleGAN2 with CLIP/LPIPS/latent losses.

    domain: the domain config (generator.{checkpoint, truncation_psi, noise_mode}, clip, loss_clip,
    prompts, perceptual, identity_metric). loss: weights {contrastive, lpips, smoothness, endpoint,
    latent, identity, tau}. In-code modules (tests, custom identity networks) can be passed as
    ``generator``, ``clip``, ``loss_clip``, ``perceptual``, ``identity_net`` (training loss),
    ``identity_metric_net`` (evaluation); they are not saved in hparams.

    clip_loss: 'contrastive' (paper) or 'cosine' (1 - cos(last frame, prompt)); when
    ``loss.contrastive`` is 0 the cosine form is used with weight ``cosine_fallback_weight``
    (0 disables text guidance entirely).

    init_checkpoint: warm start for fine-tuning: the animator weights of an export (.safetensors) or
    a Lightning checkpoint of the same architecture (its optimiser state and step are not taken;
    resuming a run from its own last.ckpt still wins). Ignored for inference.
    """

    def __init__(self, domain: Mapping, loss: Mapping, hidden: int = 384, variant: str = "ours",
                 train_frames: int = 4, val_frames: int = 16, val_decay: str = "linear", lr: float = 1e-3,
                 text_lr: float = 0.0, betas: Sequence[float] = (0.0, 0.999), mapper_hidden: Optional[int] = None,
                 mapper_last_activation: str = "lrelu", mapper_lr_mul: float = 1.0, h0_eval: str = "random",
                 image_offset_schedule: str = "motion", clip_loss: str = "contrastive",
                 cosine_fallback_weight: float = 0.5, clip_views: int = 0, clip_view_noise: float = 0.0,
                 lpips_size: Optional[int] = 224, lpips_path: Optional[str] = None,
                 video_every_n_steps: int = 500, video_fps: float = 10.0, num_videos: int = 4,
                 hash_check: str = "error", inference_only: bool = False, identity_metric_path: Optional[str] = None,
                 motion_total: str = "train", use_image_mapper: bool = True, offset_space: str = "wplus",
                 offset_layers: Optional[Sequence[int]] = None, identity_projection: float = 0.0,
                 projection_reader: Optional[str] = None, init_checkpoint: Optional[str] = None,
                 generator: Optional[nn.Module] = None, clip: Optional[nn.Module] = None,
                 loss_clip: Optional[nn.Module] = None, perceptual: Optional[nn.Module] = None,
                 identity_net: Optional[nn.Module] = None, identity_metric_net: Optional[nn.Module] = None):
        super().__init__()
        domain, loss = _plain(domain), _plain(loss)
        self.save_hyperparameters(ignore=list(FROZEN))
        for key in list(self.hparams):  # hydra hands over DictConfig/ListConfig: checkpoints need plain data
            self.hparams[key] = _plain(self.hparams[key])
        self.hparams["domain"], self.hparams["loss"] = domain, loss
        missing = [k for k in LOSS_KEYS if k not in loss]
        if missing:
            raise UserError(f"loss config lacks {', '.join(missing)}")
        if clip_views < 0 or clip_view_noise < 0:
            raise UserError(f"model.clip_views and model.clip_view_noise must be >= 0, got {clip_views}, {clip_view_noise}")
        if clip_loss not in ("contrastive", "cosine"):
            raise UserError(f"clip_loss '{clip_loss}' is not contrastive or cosine")
        if hash_check not in ("error", "warn", "off"):
            raise UserError(f"hash_check '{hash_check}' is not error, warn or off")
        if motion_total not in MOTION_TOTALS:
            raise UserError(f"motion_total '{motion_total}' is not one of {', '.join(MOTION_TOTALS)}")
        if val_decay not in DECAYS:
            raise UserError(f"val_decay '{val_decay}' is not one of {', '.join(DECAYS)}")
        if train_frames < 2 or val_frames < 2:
            raise UserError("train_frames and val_frames must be >= 2")
        self.domain, self.loss_cfg = domain, {k: float(loss[k]) for k in LOSS_KEYS}
        self.prompt_list = prompt_list(domain)
        self.noise_mode = str(_get(domain, "generator.noise_mode", "const"))
        self.truncation_psi = float(_get(domain, "generator.truncation_psi", 1.0))
        self.frozen_sources: dict[str, tuple[list[str], nn.Module]] = {}

        # ---- frozen generator
        files: list[str] = []
        if generator is None:
            from src.stylegan import load_generator

            ckpt = _get(domain, "generator.checkpoint")
            if not ckpt:
                raise UserError("domain.generator.checkpoint is not set")
            generator = load_generator(ckpt)
            files = [str(ckpt)] + self._sidecars(ckpt)
        self.generator = self._freeze(generator)
        self.frozen_sources["generator"] = (files, self.generator)

        # ---- CLIP for the animator's inputs (text tower optionally fine-tuned) and for the loss
        self.clip = self._freeze(self._build_clip("clip", clip))
        self.frozen_sources["clip"] = (list(getattr(self.clip, "weight_files", [])), self.clip)
        self.text_params: list[nn.Parameter] = []
        if text_lr > 0:
            self.text_params = list(self.clip.text_parameters())
            for p in self.text_params:
                p.requires_grad_(True)
        same_clip = _plain(_get(domain, "loss_clip")) == _plain(_get(domain, "clip")) and loss_clip is None
        if inference_only:
            self.loss_clip = None
        elif same_clip and text_lr == 0:
            self.loss_clip = self.clip  # one frozen copy serves both roles
        else:
            self.loss_clip = self._freeze(self._build_clip("loss_clip", loss_clip))
            self.frozen_sources["loss_clip"] = (list(getattr(self.loss_clip, "weight_files", [])), self.loss_clip)

        # ---- perceptual / identity networks (training only)
        self.perceptual = None
        if not inference_only and perceptual is None and self.loss_cfg["lpips"] > 0:
            from src.networks.perceptual import build_perceptual

            kind = _get(domain, "perceptual", "none")
            perceptual = build_perceptual(kind, lpips_path, lpips_size)
            if perceptual is None:
                warnings.warn("domain.perceptual is 'none': the LPIPS loss term is skipped")
        if perceptual is not None:
            self.perceptual = self._freeze(perceptual)
            self.frozen_sources["perceptual"] = ([f] if (f := getattr(perceptual, "weights_file", None)) else [],
                                                 self.perceptual)
        id_files: list[str] = []
        if identity_net is None and not inference_only and self.loss_cfg["identity"] > 0:
            from src.networks.face_id import build_identity_net, identity_net_files

            id_kind = _get(domain, "identity_loss.kind", "none")
            id_ckpt = _get(domain, "identity_loss.checkpoint")
            identity_net = build_identity_net(id_kind, id_ckpt)
            id_files = identity_net_files(id_kind, id_ckpt) if identity_net is not None else []
        self.identity_net = self._freeze(identity_net) if identity_net is not None else None
        if not inference_only and self.loss_cfg["identity"] > 0 and self.identity_net is None:
            raise UserError("loss.identity > 0 needs an identity network: set domain.identity_loss.kind and "
                            ".checkpoint (or pass identity_net=...)")
        if self.identity_net is not None:
            self.frozen_sources["identity_net"] = (id_files, self.identity_net)
        self.identity_metric_net = self._freeze(identity_metric_net) if identity_metric_net is not None else None

        # CLIP-loss views: the loss is averaged over the last frame and `clip_views` label-preserving
        # augmented copies, so that it cannot be satisfied by pixel patterns that fool the CLIP.
        # (kept out of the module tree: its buffer is not a weight and must not enter checkpoints)
        self._view_pipes: dict[str, nn.Module] = {}

        # ---- the trainable animator
        self.animator = RecurrentAnimator(
            embed_dim=self.clip.embed_dim, num_ws=self.generator.num_ws, w_dim=self.generator.w_dim, hidden=hidden,
            variant=variant, mapper_hidden=mapper_hidden, mapper_last_activation=mapper_last_activation,
            mapper_lr_mul=mapper_lr_mul, h0_eval=h0_eval, image_offset_schedule=image_offset_schedule,
            use_image_mapper=use_image_mapper, offset_space=offset_space, offset_layers=offset_layers)
        # identity-keeping projection at inference (src/networks/identity_projection.py): each face's
        # offsets lose their component along the W+ directions that move its identity readings
        if not 0.0 <= float(identity_projection) <= 1.0:
            raise UserError(f"identity_projection must be in [0, 1], got {identity_projection}")
        if float(identity_projection) > 0 and not projection_reader:
            raise UserError("identity_projection > 0 needs model.projection_reader (an identity-attribute reader)")
        self.frozen_hashes = {name: self._hash(name) for name in self.frozen_sources}
        if init_checkpoint and not inference_only:
            self._warm_start(init_checkpoint)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _sidecars(path: str) -> list[str]:
        p = Path(path)
        side = p.with_suffix(".json")
        return [str(side)] if p.suffix == ".safetensors" and side.is_file() else []

    @staticmethod
    def _freeze(module: nn.Module) -> nn.Module:
        module.requires_grad_(False)
        return module.eval()

    def _build_clip(self, key: str, module: Optional[nn.Module]) -> ClipEncoder:
        if isinstance(module, ClipEncoder):
            return module
        cfg = _get(self.domain, key)
        if cfg is None:
            raise UserError(f"domain.{key} is not set")
        if module is None and cfg.get("kind") == "module":
            raise UserError(f"domain.{key}.kind is 'module': pass the CLIP module in code ({key}=...)")
        return ClipEncoder.from_config(cfg, module=module)

    def _warm_start(self, path: str) -> None:
        """Load the animator weights of ``path`` (an export or a Lightning checkpoint) into self.animator."""
        try:
            _, state, hashes = read_animator_file(path)
        except UserError as e:
            raise UserError(f"model.init_checkpoint: {e}") from None
        prefix = "animator."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            self.animator.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise UserError(f"model.init_checkpoint {path}: its animator does not fit this model config "
                            f"({str(e).splitlines()[0]})") from None
        # its motion was learnt against its own generator and CLIP: another one makes the start meaningless
        for name in ("generator", "clip"):
            rec, cur = hashes.get(name), self.frozen_hashes.get(name)
            if rec and cur and rec.get("sha256") != cur["sha256"]:
                warnings.warn(f"model.init_checkpoint {path} was trained with another {name} "
                              f"({rec.get('source')}) than this run's ({cur['source']})")

    def _hash(self, name: str) -> dict[str, Any]:
        files, module = self.frozen_sources[name]
        if files:
            return {"source": ", ".join(Path(f).name for f in files), "sha256": sha256_files(files)}
        return {"source": f"in-code {type(module).__name__}", "sha256": sha256_module(module)}

    def projection_reader(self) -> nn.Module:
        """The identity-attribute reader of the inference projection (hparams.projection_reader), loaded
        on first use and cached outside the module tree (it is not a weight of the animator)."""
        reader = self.__dict__.get("_projection_reader")
        if reader is None:
            path = self.hparams.get("projection_reader")
            if not path:
                raise UserError("identity projection needs model.projection_reader (an identity-attribute reader; "
                                "experiment=embedded_identity_reader trains one)")
            from src.networks.face_id import load_identity_reader

            # the first use may come under torch.inference_mode() (Lightning's validation): weights
            # loaded there would be inference tensors, which the Jacobian's backward cannot use
            with torch.inference_mode(False):
                reader = load_identity_reader(path, device=next(self.animator.parameters()).device)
            self.__dict__["_projection_reader"] = reader
        return reader

    def identity_jacobian(self, w_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(J [N, A, L*C], shown [N, A] bool) of the projection reader at faces w_input [N, L, C]: the
        first-order effect of a W+ offset on each identity reading, and which readings each face shows.
        It depends on the face alone, so one computation serves every prompt (see ``animate``)."""
        from src.networks.identity_projection import identity_jacobian

        reader = self.projection_reader()
        render = lambda ws: self.generator.synthesis(ws, noise_mode=self.noise_mode)  # noqa: E731
        device = next(self.generator.parameters()).device
        jac, readings = identity_jacobian(render, reader, w_input.to(device).float(), self.animator.layer_mask)
        return jac, reader.shown(readings)

    def project_identity(self, w_input: torch.Tensor, offsets: torch.Tensor, strength: float,
                         jacobian: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """offsets [N,T,L,C] without ``strength`` of their first-order effect on the identity readings
        of each face w_input [N,L,C] (the readings a face does not show are left free). jacobian: the
        faces' ``identity_jacobian`` when already computed."""
        from src.networks.identity_projection import project_offsets

        jac, shown = jacobian if jacobian is not None else self.identity_jacobian(w_input)
        if jac.shape[0] != offsets.shape[0]:
            raise UserError(f"identity Jacobian of {jac.shape[0]} faces for {offsets.shape[0]} animations")
        return project_offsets(offsets, jac, strength, rows=shown)

    def train(self, mode: bool = True) -> "AnimatorModule":
        super().train(mode)
        for name in FROZEN:  # frozen networks stay in eval mode (no dropout/batch-stat updates)
            m = getattr(self, name, None)
            if isinstance(m, nn.Module):
                m.eval()
        return self

    # ------------------------------------------------------------------ checkpoint handling
    def _trainable_frozen_keys(self) -> set[str]:
        """Keys under frozen prefixes that are nevertheless trained (the fine-tuned text tower)."""
        ids = {id(p) for p in self.text_params}
        return {f"clip.{n}" for n, p in self.clip.named_parameters() if id(p) in ids}

    def is_frozen_key(self, key: str) -> bool:
        return key.split(".", 1)[0] in FROZEN and key not in self._trainable_frozen_keys()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not self.is_frozen_key(k)}
        checkpoint["frozen_hashes"] = dict(self.frozen_hashes)
        checkpoint["lgfa_format"] = CHECKPOINT_FORMAT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_frozen_hashes(checkpoint.get("frozen_hashes") or {})

    def check_frozen_hashes(self, saved: Mapping[str, Mapping[str, str]], mode: Optional[str] = None) -> list[str]:
        """Compare the saved hashes with the loaded frozen weights; returns the differing names.

        mode (default: hparams.hash_check): 'error' raises UserError, 'warn' warns, 'off' ignores.
        """
        mode = mode or self.hparams.get("hash_check", "error")
        diffs = []
        for name, rec in saved.items():
            cur = self.frozen_hashes.get(name)
            if cur is None or cur["sha256"] == rec.get("sha256"):
                continue
            diffs.append(f"{name}: trained with {rec.get('source')} (sha256 {str(rec.get('sha256'))[:12]}), "
                         f"loaded {cur['source']} (sha256 {cur['sha256'][:12]})")
        if diffs and mode != "off":
            msg = ("frozen weights differ from those the checkpoint was trained with: " + "; ".join(diffs)
                   + " (pass hash_check='warn' to load anyway)")
            if mode == "error":
                raise UserError(msg)
            warnings.warn(msg)
        return [d.split(":", 1)[0] for d in diffs]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load trainable weights; the frozen ones come from their own files (already loaded).
        A key that is neither present nor frozen is still an error under ``strict``."""
        full = dict(state_dict)
        for k, v in super().state_dict().items():
            if k not in full and self.is_frozen_key(k):
                full[k] = v
        return super().load_state_dict(full, strict=strict, assign=assign)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not self.is_frozen_key(k)}

    # ------------------------------------------------------------------ generator helpers
    @torch.no_grad()
    def sample_latents(self, n: Optional[int] = None, seed: Optional[int] = None,
                       seeds: Optional[Sequence[int] | torch.Tensor] = None) -> torch.Tensor:
        """W+ latents [n,num_ws,w_dim] of random faces: z ~ N(0,I) per seed, mapped with truncation psi.

        ``seeds``: one seed per sample; else ``seed`` (default 0) seeds all n draws together.
        """
        G = self.generator
        if seeds is not None:
            from src.stylegan import seeded_ws

            return seeded_ws(G, seeds, self.truncation_psi)
        if n is None:
            raise ValueError("give n or seeds")
        device = next(G.parameters()).device
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0 if seed is None else int(seed)))
        return G.mapping(z.to(device), torch.zeros(n, G.c_dim, device=device), truncation_psi=self.truncation_psi)

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        """ws [N,T,L,C] -> frames [N,T,3,H,W], all frames in ONE batched generator call."""
        n, t = ws.shape[:2]
        img = self.generator.synthesis(ws.reshape(n * t, *ws.shape[2:]), noise_mode=self.noise_mode)
        return img.reshape(n, t, *img.shape[1:])

    def render_image(self, w_input: torch.Tensor) -> torch.Tensor:
        """w_input [N,L,C] -> the input face [N,3,H,W]."""
        return self.generator.synthesis(w_input, noise_mode=self.noise_mode)

    def _text_embedding(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text_params and torch.is_grad_enabled():
            return self.clip.encode_text(prompts)
        with torch.no_grad():
            return self.clip.encode_text(prompts)

    # ------------------------------------------------------------------ inference
    def resolve_motion_total(self, requested: Optional[str] = None) -> str:
        """``requested`` ('train' | 'paper'), or the checkpoint's setting (checkpoints from before the
        option: 'train')."""
        motion_total = requested or self.hparams.get("motion_total", "train")
        if motion_total not in MOTION_TOTALS:
            raise UserError(f"motion_total '{motion_total}' is not one of {', '.join(MOTION_TOTALS)}")
        return motion_total

    @torch.no_grad()
    def animate(self, w_input: torch.Tensor, prompts: Sequence[str], num_frames: int = 16, decay: str = "linear",
                strength: float = 1.0, image: Optional[torch.Tensor] = None, seed: int = 0,
                motion_total: Optional[str] = None, identity_projection: Optional[float] = None,
                identity_jacobian: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """Animate faces from prompts.

        w_input [N,L,C] (or [L,C]); prompts: N prompts (one prompt is used for all N);
        image [N,3,H,W] in [-1,1]: the face shown to CLIP (default: G.synthesis(w_input)).
        motion_total (default: hparams.motion_total): 'train' scales the step sizes so that the video
        moves as far in total as a training video (see training_matched_strength), then ``strength``
        multiplies; 'paper' uses the authors' r_t = 0.8 / T * decay(t, T) * strength.
        identity_projection (default: hparams.identity_projection, 0): how much of each offset's
        first-order effect on the face's identity readings is removed (0..1; needs hparams.projection_reader).
        identity_jacobian: ``self.identity_jacobian(w_input)`` when already computed (it depends on the
        faces only: an evaluation of many prompts on the same faces computes it once).
        Returns dict(frames [N,T,3,H,W] in [-1,1], ws [N,T,L,C], offsets [N,T,L,C]).
        """
        if decay not in DECAYS:
            raise UserError(f"decay '{decay}' is not one of {', '.join(DECAYS)}")
        if num_frames < 2:
            raise UserError(f"num_frames must be >= 2, got {num_frames}")
        if self.resolve_motion_total(motion_total) == "train":
            strength = strength * training_matched_strength(num_frames, decay, int(self.hparams.train_frames),
                                                            self.animator.step_base)
        device = next(self.generator.parameters()).device
        w_input = w_input.to(device).float()
        if w_input.ndim == 2:
            w_input = w_input[None]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = w_input.shape[0]
        if len(prompts) == 1 and n > 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise UserError(f"{len(prompts)} prompts for {n} faces")
        was_training = self.animator.training
        self.animator.eval()
        try:
            if image is None:
                image = self.render_image(w_input)
            image_emb = self.clip.encode_image(image.to(device))
            text_emb = self.clip.encode_text(prompts)
            out = self.animator(w_input, text_emb, image_emb, num_frames, decay=decay, strength=strength,
                                generator=torch.Generator().manual_seed(int(seed)))
            projection = float(self.hparams.get("identity_projection", 0.0) if identity_projection is None
                               else identity_projection)
            if not 0.0 <= projection <= 1.0:
                raise UserError(f"identity_projection must be in [0, 1], got {projection}")
            if projection > 0:
                offsets = self.project_identity(w_input, out["offsets"], projection, jacobian=identity_jacobian)
                # variant 'ours': frame 0's offset is exactly zero and stays zero, so frame 0 is still the input
                out = {**out, "offsets": offsets, "ws": w_input[:, None] + offsets}
            frames = self.synthesize(out["ws"])
        finally:
            self.animator.train(was_training)
        return dict(frames=frames.clamp(-1, 1), ws=out["ws"], offsets=out["offsets"])

    # ------------------------------------------------------------------ training
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch, except its ``seed`` entry [N]: the seeds only seed CPU generators (latent z,
        h_0), so on the GPU they would be read back every step, a host sync per step."""
        if isinstance(batch, Mapping) and isinstance(batch.get("seed"), torch.Tensor):
            rest = {k: v for k, v in batch.items() if k != "seed"}
            moved = super().transfer_batch_to_device(rest, device, dataloader_idx)
            moved["seed"] = batch["seed"]
            return moved
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _batch_latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if batch.get("ws") is not None:
            ws = batch["ws"].to(self.device).float()
            L, C = self.generator.num_ws, self.generator.w_dim
            if ws.shape[-1] != C or ws.ndim not in (2, 3) or (ws.ndim == 3 and ws.shape[1] != L):
                raise UserError(f"input latents have shape {tuple(ws.shape[1:])} per face; the generator takes "
                                f"W [{C}] or W+ [{L}, {C}]")
            return ws[:, None].repeat(1, L, 1) if ws.ndim == 2 else ws
        if batch.get("seed") is not None:
            return self.sample_latents(seeds=batch["seed"])
        return self.sample_latents(len(batch["caption"]), seed=int(torch.randint(0, 2**31 - 1, ()).item()))

    def _h0_seeds(self, batch: Mapping[str, Any]) -> Optional[torch.Tensor]:
        """Training h_0 seeds [N]: one per sample, from the sample's own latent seed, so that h_0 of a
        sample does not depend on how a batch is split over DDP ranks. Offset by 2**31 because the
        data module's latent seeds lie in [0, 2**31): h_0 and z never come from the same stream."""
        seed = batch.get("seed")
        if seed is None:
            return None
        seed = torch.as_tensor(seed, dtype=torch.long).reshape(-1).cpu()
        return seed + H0_SEED_OFFSET

    def _eval_seed(self, batch: Mapping[str, Any]) -> int:
        """The one seed of an evaluation batch's h_0 draws (animate() seeds the whole batch with it)."""
        seed = batch.get("seed")
        if seed is None:
            return 0
        return int(seed[0]) if isinstance(seed, (list, tuple, torch.Tensor)) else int(seed)

    def contrastive_candidates(self, batch: Mapping[str, Any]) -> tuple[list[str], torch.Tensor]:
        """(candidate prompts [M], positive [N]) of the contrastive loss: the negatives of every image
        and the row of each image's own prompt among them.

        batch["candidates"] (the data module's distinct prompts of the whole GLOBAL batch, the same
        on every DDP rank) when present: a rank then computes the union batch's loss on its rows.
        Else the local captions, which must be distinct (a repeated prompt would be its own negative).
        """
        captions = list(batch["caption"])
        if batch.get("candidates") is None:
            if len(set(captions)) != len(captions):
                raise UserError("the contrastive loss needs distinct prompts in a batch (or a batch['candidates'] "
                                "list of the distinct prompts to contrast against)")
            return captions, torch.arange(len(captions))
        candidates = list(batch["candidates"])
        if len(set(candidates)) != len(candidates):
            raise UserError("batch['candidates'] must list distinct prompts")
        row = {c: j for j, c in enumerate(candidates)}
        missing = sorted({c for c in captions if c not in row})
        if missing:
            raise UserError(f"batch['candidates'] lacks the batch's prompts {missing}")
        return candidates, torch.tensor([row[c] for c in captions])

    def clip_loss_weight(self) -> tuple[str, float]:
        """('contrastive'|'cosine', weight) of the text-alignment term."""
        w = self.loss_cfg["contrastive"]
        if w == 0:
            return "cosine", float(self.hparams.cosine_fallback_weight)
        return ("cosine" if self.hparams.clip_loss == "cosine" else "contrastive"), w

    def compute_losses(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """One training forward: returns (total, {term: value}, outputs).

        batch: caption list[str] (N), seed [N] (latent and h_0 seeds) or ws [N,L,C] / [N,C], and
        optionally candidates list[str] (M) for the contrastive loss (see contrastive_candidates).
        Every term is a mean over the N local samples, so with equal N per DDP rank the gradient
        average of DDP is the gradient of the union batch. Nothing here draws from a random stream
        shared by the batch's samples when clip_views = 0 and the generator's noise_mode is not
        'random' (else equivalence with one process holds in distribution only).
        """
        captions = list(batch["caption"])
        form, w_clip = self.clip_loss_weight()
        if form == "contrastive":
            candidates, positive = self.contrastive_candidates(batch)  # validate before the expensive part
        T = int(self.hparams.train_frames)
        w_input = self._batch_latents(batch)
        with torch.no_grad():
            image = self.render_image(w_input)  # the input face is the generator's own image of w_input
            image_emb = self.clip.encode_image(image)
        text_emb = self._text_embedding(captions)
        out = self.animator(w_input, text_emb, image_emb, T, decay="none", h0_seeds=self._h0_seeds(batch))
        ws, offsets = out["ws"], out["offsets"]
        if self.hparams.variant == "ours" and self.noise_mode != "random":
            # frame 0 is the input face exactly (ws[:,0] == w_input): render only frames 1..T-1
            frames = torch.cat([image[:, None], self.synthesize(ws[:, 1:])], dim=1)
        else:
            frames = self.synthesize(ws)

        terms: dict[str, torch.Tensor] = {}
        lc = self.loss_clip
        views = 1 + int(self.hparams.clip_views)
        last = frames[:, -1]
        if views > 1:
            # random augmentation from the global RNG: per rank, so DDP matches one process in distribution only
            pipe = self._view_pipes.setdefault(str(last.device), label_preserving_pipe(p=1.0).to(last.device))
            last = augmented_views(last, pipe, views - 1, float(self.hparams.clip_view_noise))
        img_last = lc.encode_image(last).view(views, len(captions), -1)
        if form == "contrastive":
            with torch.no_grad():
                txt = lc.encode_text(candidates)  # [M,D], the same on every rank
            positive = positive.to(txt.device)
            terms[form] = torch.stack([contrastive_clip_loss(e, txt, self.loss_cfg["tau"], positive=positive)
                                       for e in img_last]).mean()
        else:
            with torch.no_grad():
                txt = lc.encode_text(captions)
            terms[form] = torch.stack([cosine_clip_loss(e, txt) for e in img_last]).mean()
        if self.perceptual is not None:
            terms["lpips"] = lpips_identity_loss(self.perceptual, image, frames[:, 0], frames[:, -1])
        terms["smoothness"] = smoothness_loss(offsets)
        terms["endpoint"] = endpoint_loss(offsets)
        terms["latent"] = latent_reg_loss(ws, w_input)
        if self.identity_net is not None:
            terms["identity"] = identity_loss(self.identity_net, frames, image)
        weights = {k: self.loss_cfg[k] for k in ("lpips", "smoothness", "endpoint", "latent", "identity")}
        weights[form] = w_clip
        total = total_loss(terms, weights)
        return total, terms, dict(frames=frames, ws=ws, image=image, w_input=w_input)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        total, terms, _ = self.compute_losses(batch)
        n = len(batch["caption"])
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = int(self.hparams.video_every_n_steps or 0)
        if every > 0 and self.global_step % every == 0 and self.global_rank == 0:
            self.log_video()

    # ------------------------------------------------------------------ evaluation
    def _identity_fn(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
        """The identity embedder of the evaluation metrics and the key prefix of its metrics.

        An in-code ``identity_metric_net`` wins; else domain.identity_metric (oracle: the attribute
        oracle's identity parameters, from ``identity_metric_path``; dlib; arcface with
        ``identity_metric_path`` = IR-SE50 weights). When none is configured or it cannot be built,
        CLIP image features stand in and the keys get the prefix 'clip_' (clip_id_drift, clip_acd).
        """
        if self.identity_metric_net is not None:
            return self.identity_metric_net, ""
        if "_id_embedder" not in self.__dict__:
            self.__dict__["_id_embedder"] = self._build_identity_embedder()
        emb = self.__dict__["_id_embedder"]
        if emb is not None:
            return emb, ""
        return self._metric_clip().encode_image, "clip_"

    def _build_identity_embedder(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        kind = str(_get(self.domain, "identity_metric", "none"))
        path = self.hparams.get("identity_metric_path")
        try:
            from src.eval.identity import identity_embedder

            if kind == "oracle":
                if not path:
                    raise UserError("identity_metric 'oracle' needs model.identity_metric_path (oracle weights)")
                from src.data.synthetic.params import PARAM_SPACE
                from src.networks.oracle import load_oracle

                oracle = load_oracle(path, self.device)
                mask = PARAM_SPACE.mask("identity", device=self.device)
                return identity_embedder("oracle", fn=lambda x: oracle(x)[:, mask])
            if kind == "arcface":
                return identity_embedder("arcface", path=path, device=self.device)
            return identity_embedder(kind)
        except (UserError, ImportError, OSError) as e:
            warnings.warn(f"identity metric '{kind}' unavailable ({e}); CLIP features stand in (clip_* keys)")
            return None

    def _metric_clip(self) -> ClipEncoder:
        return self.loss_clip if self.loss_clip is not None else self.clip

    @torch.no_grad()
    def evaluate_batch(self, batch: Mapping[str, Any]) -> dict[str, float]:
        from src.eval.metrics import video_metrics

        captions = list(batch["caption"])
        w_input = self._batch_latents(batch)
        image = self.render_image(w_input).clamp(-1, 1)  # as the returned frames
        out = self.animate(w_input, captions, num_frames=int(self.hparams.val_frames),
                           decay=self.hparams.val_decay, image=image, seed=self._eval_seed(batch))
        identity_fn, prefix = self._identity_fn()
        return video_metrics(out["frames"], ws=out["ws"], image=image, clip=self._metric_clip(), prompts=captions,
                             prompt_list=self.prompt_list or None, identity_fn=identity_fn, identity_prefix=prefix)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        metrics = self.evaluate_batch(batch)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, on_epoch=True, sync_dist=True,
                      batch_size=len(batch["caption"]), prog_bar=False)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        metrics = self.evaluate_batch(batch)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()}, on_epoch=True, sync_dist=True,
                      batch_size=len(batch["caption"]))

    @torch.no_grad()
    def log_video(self) -> Optional[Path]:
        """Render a grid video of the first ``num_videos`` prompts (fixed faces) into <run>/videos/."""
        from src.utils.video import default_video_suffix, write_grid_video

        if self.trainer is None or not self.prompt_list:
            return None
        k = min(int(self.hparams.num_videos), len(self.prompt_list))
        prompts = self.prompt_list[:k]
        ws = self.sample_latents(seeds=list(range(k)))
        out = self.animate(ws, prompts, num_frames=int(self.hparams.val_frames), decay=self.hparams.val_decay)
        suffix = default_video_suffix()  # gif where ffmpeg is missing (e.g. a bare GPU node)
        path = Path(self.trainer.default_root_dir) / "videos" / f"step{self.global_step:07d}{suffix}"
        write_grid_video(out["frames"].cpu(), path, fps=float(self.hparams.video_fps))
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log({"train/video": wandb.Video(str(path), fps=int(self.hparams.video_fps),
                                                                  format=suffix.lstrip(".")),
                                       "trainer/global_step": self.global_step})
        return path

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        betas = tuple(float(b) for b in self.hparams.betas)
        groups = [{"params": list(self.animator.parameters()), "lr": float(self.hparams.lr)}]
        if self.text_params:
            groups.append({"params": self.text_params, "lr": float(self.hparams.text_lr)})
        return torch.optim.Adam(groups, betas=betas)


# config entries that name files; relative paths in an exported animator are relative to its folder
_FILE_KEYS = ("domain.generator.checkpoint", "domain.clip.checkpoint", "domain.loss_clip.checkpoint",
              "domain.clip.pretrained", "domain.loss_clip.pretrained", "domain.identity_loss.checkpoint",
              "identity_metric_path", "projection_reader", "init_checkpoint")


def _read_lightning_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    ckpt = AtomicCheckpointIO().load_checkpoint(path)
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an animator checkpoint (no hyper_parameters/state_dict)")
    return _plain(dict(ckpt["hyper_parameters"])), ckpt["state_dict"], ckpt.get("frozen_hashes") or {}


def _read_safetensors_export(path: Path) -> tuple[dict, dict, dict]:
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an exported animator (metadata format {meta.get('format')!r}, "
                        f"expected {CHECKPOINT_FORMAT!r})")
    hp, hashes = json.loads(meta["hyper_parameters"]), json.loads(meta.get("frozen_hashes", "{}"))
    for key in _FILE_KEYS:  # relative file names are relative to the export's folder
        value = _get(hp, key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).exists():
            _set(hp, key, str(path.parent / value))
    return hp, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, hashes


def export_animator(module: "AnimatorModule", path: str | Path, relative_to: Optional[str | Path] = None,
                    fp16: bool = False) -> Path:
    """Save an animator for distribution: its trainable weights as safetensors, the config and the
    frozen weights' hashes in the metadata header. With ``relative_to``, file names in the config
    under that folder are stored relative to it (so an assets/ folder can move). Atomic."""
    import json

    from safetensors.torch import save_file

    from src.utils.io import atomic_write

    hp = _plain(dict(module.hparams))
    hp = {k: v for k, v in hp.items() if k not in FROZEN}
    if relative_to is not None:
        base = Path(relative_to).resolve()
        for key in _FILE_KEYS:
            value = _get(hp, key)
            if isinstance(value, str) and value and Path(value).resolve().is_relative_to(base):
                _set(hp, key, str(Path(value).resolve().relative_to(base)))
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in module.trainable_state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "hyper_parameters": json.dumps(hp),
            "frozen_hashes": json.dumps(module.frozen_hashes)}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def read_animator_file(path: str | Path) -> tuple[dict, dict, dict]:
    """(hyper-parameters, state dict, frozen-weight hashes) of an animator file: a Lightning checkpoint
    (read with torch.load(weights_only=True)) or an export of :func:`export_animator`. Executes no code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"animator checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    is_zip = head[:2] == b"PK"
    return _read_lightning_checkpoint(path) if is_zip or path.suffix == ".ckpt" else _read_safetensors_export(path)


def load_animator(path: str | Path, device: str | torch.device = "cpu", map_overrides: Optional[Mapping] = None,
                  hash_check: Optional[str] = None, **modules: nn.Module) -> AnimatorModule:
    """Rebuild an :class:`AnimatorModule` for inference from a Lightning checkpoint (``.ckpt``, read
    with torch.load(weights_only=True)) or an export of :func:`export_animator` (``.safetensors``).

    The generator and CLIP are loaded from the files named in the saved config (``map_overrides``
    changes config entries, nested or dotted, e.g. {'domain.generator.checkpoint': '/new/G.pkl'});
    their sha256 must match the checkpoint's record (``hash_check`` error|warn|off, default: the
    checkpoint's setting). In-code modules (generator=, clip=, ...) replace file loading.
    """
    path = Path(path).expanduser()
    hp, state_dict, hashes = read_animator_file(path)
    for key, value in _flatten(_plain(dict(map_overrides or {}))).items():
        _set(hp, key, value)
    hp["inference_only"] = True
    if hash_check is not None:
        hp["hash_check"] = hash_check
    hp = {k: v for k, v in hp.items() if k not in FROZEN}
    module = AnimatorModule(**hp, **modules)
    module.check_frozen_hashes(hashes)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the saved config ({str(e).splitlines()[0]})") from None
    return module.to(device).eval()

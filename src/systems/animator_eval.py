"""Validation and test of the animator during training: video metrics of whole animations through
the pipeline, identity metrics by the domain's embedder, and grid videos for the logs.

A mixin of :class:`~src.systems.animator.AnimatorModule` (uses ``pipeline``, the typed groups, ``domain``,
``prompt_list``, ``clip``/``loss_clip`` and ``identity_metric_net``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from src.eval.metrics import video_metrics
from src.utils.config import get_dotted
from src.utils.errors import UserError


class AnimatorEvaluation:
    """validation_step / test_step / log_video of the animator LightningModule."""

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
        kind = str(get_dotted(self.domain, "identity_metric", "none"))
        path = self.validation_cfg.identity_metric_path
        try:
            from src.identity.build import identity_embedder

            if kind == "oracle":
                if not path:
                    raise UserError("identity_metric 'oracle' needs model.validation.identity_metric_path (oracle weights)")
                from src.embedded.oracle import identity_reading

                return identity_embedder("oracle", fn=identity_reading(path, self.device))
            if kind == "arcface":
                return identity_embedder("arcface", path=path, device=self.device)
            return identity_embedder(kind)
        except (UserError, ImportError, OSError) as e:
            warnings.warn(f"identity metric '{kind}' unavailable ({e}); CLIP features stand in (clip_* keys)")
            return None

    def _metric_clip(self):
        return self.loss_clip if self.loss_clip is not None else self.clip

    def _eval_seed(self, batch: Mapping[str, Any]) -> int:
        """The one seed of an evaluation batch's h_0 draws (animate() seeds the whole batch with it)."""
        seed = batch.get("seed")
        if seed is None:
            return 0
        return int(seed[0]) if isinstance(seed, (list, tuple, torch.Tensor)) else int(seed)

    @torch.no_grad()
    def evaluate_batch(self, batch: Mapping[str, Any]) -> dict[str, float]:
        captions = list(batch["caption"])
        w_input = self._batch_latents(batch)
        image = self.render_image(w_input).clamp(-1, 1)  # as the returned frames
        out = self.animate(w_input, captions, num_frames=int(self.inference_cfg.frames),
                           decay=self.inference_cfg.decay, image=image, seed=self._eval_seed(batch))
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
        k = min(int(self.validation_cfg.num_videos), len(self.prompt_list))
        prompts = self.prompt_list[:k]
        ws = self.sample_latents(seeds=list(range(k)))
        out = self.animate(ws, prompts, num_frames=int(self.inference_cfg.frames), decay=self.inference_cfg.decay)
        suffix = default_video_suffix()  # gif where ffmpeg is missing (e.g. a bare GPU node)
        path = Path(self.trainer.default_root_dir) / "videos" / f"step{self.global_step:07d}{suffix}"
        write_grid_video(out["frames"].cpu(), path, fps=float(self.validation_cfg.video_fps))
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                import wandb

                logger.experiment.log({"train/video": wandb.Video(str(path), fps=int(self.validation_cfg.video_fps),
                                                                  format=suffix.lstrip(".")),
                                       "trainer/global_step": self.global_step})
        return path

"""Structured-config schemas (Hydra's ConfigStore), listed first by the primary configs: a misspelt key
or a wrong type fails at compose time naming the key. The train config's ``domain`` and ``loss``
groups are declared in ``src/config/domain.py`` and ``src/config/loss.py``. Value checks a type cannot
express (ranges, enums, files): :func:`validate_config`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from src.config.animator import (AnimatorInferenceConfig, AnimatorNetConfig, AnimatorTrainConfig,
                                 AnimatorValidationConfig)
from src.config.domain import DomainConfig
from src.config.groups import typed_group
from src.config.loss import LossConfig
from src.utils.errors import UserError


@dataclass
class HardwareConfig:
    accelerator: str = "cpu"          # cpu | gpu | auto
    devices: Any = 1                  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"            # auto | ddp | ddp_spawn | ddp_find_unused_parameters_true
    precision: str = "32-true"        # 32-true | 16-mixed | bf16-mixed
    num_workers: int = 0
    deterministic: bool = False
    ops_impl: str = "auto"            # auto | ref | cuda (src.ops policy)
    ops_on_build_failure: str = "error"  # error | fallback
    cpu_threads: Optional[int] = None  # intra-op CPU threads per process; null: $OMP_NUM_THREADS, else cores / local processes


@dataclass
class TaskConfig:
    name: str = "???"
    monitor: Optional[str] = None
    monitor_mode: str = "max"


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "${paths.root_dir}/data"
    log_dir: str = "${paths.root_dir}/logs"
    checkpoints: str = "${paths.root_dir}/checkpoints"
    assets: str = "${paths.root_dir}/assets"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: Any = None
    data: Any = None
    trainer: Dict[str, Any] = field(default_factory=dict)
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None        # experiment name: fixes the run dir, so a rerun/requeue resumes
    seed: int = 12345
    tags: List[str] = field(default_factory=list)
    resume: bool = True               # resume from <run dir>/checkpoints/last.ckpt when it exists
    run_lock: str = "refuse"          # a live run holds the folder: refuse | new_folder (start afresh beside it)
    test: bool = True                 # run trainer.test after fit
    optimized_metric: Optional[str] = None
    extras: Dict[str, Any] = field(default_factory=dict)


@dataclass
class AnimateConfig:
    checkpoint: str = "${paths.assets}/animator_synthetic.safetensors"
    image: Optional[str] = None       # a face photo / render, projected into the generator
    latent: Optional[str] = None      # a W [1,w_dim] or W+ [1,num_ws,w_dim] file
    seed: Optional[int] = None        # sample the input face from the generator
    text: Any = "The person is smiling."  # one prompt, or a list of prompts chained
    frames: int = 16
    fps: float = 10.0
    strength: float = 1.0
    decay: str = "linear"             # none | linear | sqrt | exp | const
    motion_total: Optional[str] = None  # train | paper (null: the checkpoint's setting)
    identity_projection: Optional[float] = None  # 0..1 of the identity projection (null: the checkpoint's)
    projection_reader: Optional[str] = None     # its identity-attribute reader (null: the checkpoint's)
    text_adapter: Optional[bool] = None  # read the text through the checkpoint's text adapter (null: when it has one)
    output: str = "animation.mp4"     # .mp4 | .gif | .webp ; a PNG strip is written beside it
    strip: bool = True
    projection_steps: int = 300
    device: str = "cpu"
    cuda_graphs: bool = False         # GPU only: replay CUDA graphs of the generator and the recurrence
    channels_last: bool = True        # GPU only: channels-last activations in the generator's fp16 blocks
    save_latent: Optional[str] = None  # also save the face's W+ latent (.npy)
    diverse: Optional[int] = None     # animate this many new faces near the average face: a grid video + sheet
    list_prompts: bool = False        # print the checkpoint's concepts and exit
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvaluateConfig:
    checkpoint: str = "${paths.assets}/animator_synthetic.safetensors"
    faces: int = 200                  # faces: the latents of seeds face_seed_offset, face_seed_offset + 1, ...
    face_seed_offset: int = 10000
    face_sampling: str = "seeds"      # seeds | near_average (new faces near the average face, seed face_seed_offset)
    frames: int = 16
    batch: int = 50                   # faces per generator call
    decay: str = "linear"
    strength: float = 1.0
    motion_total: Optional[str] = None  # train | paper (null: the checkpoint's setting)
    identity_projection: Optional[float] = None  # 0..1 (null: the checkpoint's setting)
    projection_reader: Optional[str] = None
    text_adapter: Optional[bool] = None  # the checkpoint's text adapter for other wordings (null: when it has one)
    oracle: Optional[str] = "auto"    # the embedded domain's attribute oracle: auto (for that domain) | a path | null
    face_net: Optional[str] = "auto"  # the network of the face ACD: auto (the domain's) | a path | null
    paper_metrics: bool = True        # false: skip MS-SSIM, shape and face ACD (CPU-bound, float64)
    concepts: Optional[List[str]] = None  # null: every concept of the checkpoint's domain
    phrasings: str = "template"       # template | training | heldout (embedded vocabulary) | a .json file
    device: str = "cpu"
    output: str = "evaluation.json"   # the full results (JSON, written atomically)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class DemoSettings:  # demo.* of conf/demo.yaml (each key's meaning); value checks: src/demo/settings.py
    checkpoint: str = "${paths.assets}/animator_synthetic.safetensors"
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = "cpu"
    queue_size: int = 8
    max_upload_mb: float = 10.0


@dataclass
class DemoConfig:
    demo: DemoSettings = field(default_factory=DemoSettings)
    paths: PathsConfig = field(default_factory=PathsConfig)


#: the schemas by the names the primary configs list first in their defaults
SCHEMAS = {"train_schema": TrainConfig, "animate_schema": AnimateConfig, "evaluate_schema": EvaluateConfig,
           "demo_schema": DemoConfig}


def register_configs() -> None:
    """Register the schemas (SCHEMAS) in Hydra's config store."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)


_PRECISIONS = {"32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"}
_DECAYS = {"none", "linear", "sqrt", "exp", "const"}


def validate_config(cfg: DictConfig) -> None:
    """Range and value checks a type cannot express. Raises UserError naming the key."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise UserError(msg)

    if cfg.get("seed") is not None:
        need(0 <= int(cfg.seed) < 2**32, f"seed must be in [0, 2**32), got {cfg.seed}")
    if "loss" in cfg:
        for key, value in cfg.loss.items():
            if isinstance(value, (int, float)):
                need(value >= 0, f"loss.{key} must be >= 0, got {value}")
        need(cfg.loss.tau > 0, f"loss.tau must be > 0, got {cfg.loss.tau}")
    if "hardware" in cfg:
        hw = cfg.hardware
        need(hw.accelerator in {"cpu", "gpu", "cuda", "auto", "mps"}, f"hardware.accelerator '{hw.accelerator}' is not one of cpu, gpu, auto")
        need(str(hw.precision) in _PRECISIONS, f"hardware.precision '{hw.precision}' is not one of {sorted(_PRECISIONS)}")
        need(hw.num_workers >= 0, f"hardware.num_workers must be >= 0, got {hw.num_workers}")
        need(hw.ops_impl in {"auto", "ref", "cuda"}, f"hardware.ops_impl '{hw.ops_impl}' is not one of auto, ref, cuda")
        need(hw.get("cpu_threads") is None or hw.cpu_threads >= 1,
             f"hardware.cpu_threads must be null or >= 1, got {hw.get('cpu_threads')}")
        need(hw.ops_on_build_failure in {"error", "fallback"}, f"hardware.ops_on_build_failure '{hw.ops_on_build_failure}' is not error or fallback")
    if "domain" in cfg and cfg.domain.get("name") not in (None, "???"):
        d = cfg.domain
        need(4 <= d.resolution <= 1024 and (d.resolution & (d.resolution - 1)) == 0,
             f"domain.resolution must be a power of two in 4..1024, got {d.resolution}")
        need(0.0 <= d.generator.truncation_psi <= 2.0, f"domain.generator.truncation_psi must be in [0, 2], got {d.generator.truncation_psi}")
        need("{}" in d.prompts.template, f"domain.prompts.template must contain '{{}}', got '{d.prompts.template}'")
        if "loss" in cfg and cfg.loss.get("identity", 0) > 0 and "identity_loss" in d:
            need(str(getattr(d.identity_loss.kind, "value", d.identity_loss.kind)) != "none",
                 "loss.identity > 0 needs a network: set domain.identity_loss.kind (synthetic | arcface | attributes) and .checkpoint")
    if "task" in cfg:
        need(cfg.task.monitor_mode in {"min", "max"}, f"task.monitor_mode must be min or max, got {cfg.task.monitor_mode}")
    model = cfg.get("model")
    if model is not None and "net" in model:  # animator: checked here so a sweep fails before it starts
        groups = {"net": AnimatorNetConfig, "train": AnimatorTrainConfig, "inference": AnimatorInferenceConfig,
                  "validation": AnimatorValidationConfig}
        for key, cls in groups.items():
            typed_group(cls, model.get(key), f"model.{key}")
        net = model.net
        need(net.offset_space in {"wplus", "w"}, f"model.net.offset_space '{net.offset_space}' is not wplus or w")
        layers = net.get("offset_layers")
        need(layers is None or (len(layers) > 0 and len(set(layers)) == len(layers)
                                and all(isinstance(i, int) and i >= 0 for i in layers)),
             f"model.net.offset_layers must be null or a list of distinct W+ layer indices >= 0, got {layers}")
    if model is not None and "regularization" in model:  # GAN training: the same early check of its groups
        from src.config.gan import GAN_GROUPS

        for key, cls in GAN_GROUPS.items():
            typed_group(cls, model.get(key), f"model.{key}")
    if "frames" in cfg:  # animate and evaluate configs
        need(2 <= cfg.frames <= 512, f"frames must be in 2..512, got {cfg.frames}")
        need(0 < cfg.strength <= 10, f"strength must be in (0, 10], got {cfg.strength}")
        need(cfg.decay in _DECAYS, f"decay '{cfg.decay}' is not one of {sorted(_DECAYS)}")
        need(cfg.get("motion_total") in (None, "train", "paper"),
             f"motion_total '{cfg.get('motion_total')}' is not train or paper")
        ip = cfg.get("identity_projection")
        need(ip is None or 0 <= ip <= 1, f"identity_projection must be in [0, 1], got {ip}")
    if "faces" in cfg:  # evaluate config
        need(cfg.faces >= 1, f"faces must be >= 1, got {cfg.faces}")
        need(cfg.batch >= 1, f"batch must be >= 1, got {cfg.batch}")
        need(cfg.face_seed_offset >= 0, f"face_seed_offset must be >= 0, got {cfg.face_seed_offset}")
    if "fps" in cfg:  # animate config
        need(cfg.fps > 0, f"fps must be > 0, got {cfg.fps}")
        need(cfg.projection_steps >= 1, f"projection_steps must be >= 1, got {cfg.projection_steps}")
        sources = [k for k in ("image", "latent", "seed") if cfg.get(k) is not None]
        need(len(sources) <= 1, f"give only one of image=, latent=, seed= (got {', '.join(sources)})")


def resolve_run_dir_name(name: Optional[str] = None) -> str:
    """Run folder name that survives a SLURM requeue: the experiment name, else the SLURM job id
    (array jobs: <job>_<task>), else a timestamp."""
    if name:
        return str(name)
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}_{task}" if task else f"slurm-{job}"
    import datetime as _dt

    return _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir_name"):
        # cached: every interpolation in one run sees the same timestamp
        OmegaConf.register_new_resolver("run_dir_name", resolve_run_dir_name, use_cache=True)

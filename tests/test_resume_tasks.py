"""Every training task resumes exactly: the GAN, the small CLIP (also with generated faces in its batches)
and the attribute oracle, each stopped after a checkpoint (as by kill -9) and rerun with the same name, end
with the weights and optimiser state of the run that was never stopped, bit for bit (CPU). The animator:
tests/test_resume_exact.py."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_train
from tests.test_resume_exact import _assert_bit_identical, assert_close_weights

COMMON = ["hardware=cpu", "logger=csv", "test=false", "seed=3", "data.val_batches=1",
          "callbacks.model_checkpoint.every_n_train_steps=1", "++data.steps_per_epoch=3"]
TASKS = {
    # one GAN iteration = a G and a D step (global_step + 2); both lazy regularisers run on iteration 2
    "stylegan": (["task=stylegan", "model.resolution=16", "model.optim.batch_size=4", "model.precision.mode=fp32",
                  "model.G_kwargs.z_dim=16", "model.G_kwargs.w_dim=16", "model.G_kwargs.mapping_kwargs.num_layers=2",
                  "model.G_kwargs.synthesis_kwargs.channel_base=128", "model.G_kwargs.synthesis_kwargs.channel_max=16",
                  "model.D_kwargs.channel_base=128", "model.D_kwargs.channel_max=16",
                  "model.regularization.r1_interval=2", "model.regularization.pl_interval=2",
                  "model.output.log_every=1", "trainer.val_check_interval=2"], 8, 4),
    "clip": (["task=clip", "model.batch_size=8", "model.resolution=32", "model.arch.image_size=32",
              "model.arch.patch_size=8", "model.arch.width=32", "model.arch.layers=1", "model.arch.heads=2",
              "model.arch.embed_dim=16", "model.warmup_steps=2", "model.augment_p=0.5", "model.noise_std=0.05",
              "trainer.val_check_interval=2"], 5, 2),
    # and with generated faces in the batches (tiny random generator and oracle: _generated_faces)
    "clip_generated": (["task=clip", "model.batch_size=8", "model.resolution=32", "model.arch.image_size=32",
                        "model.arch.patch_size=8", "model.arch.width=32", "model.arch.layers=1", "model.arch.heads=2",
                        "model.arch.embed_dim=16", "model.warmup_steps=2", "model.generator_fraction=0.5",
                        "trainer.val_check_interval=2"], 5, 2),
    "oracle": (["task=oracle", "model.resolution=32", "model.batch_size=8", "model.width=8", "model.hidden=16",
                "trainer.val_check_interval=2"], 5, 2),
}


def _text_cache(tmp_path) -> list[str]:
    """model.text_cache_path of a cache over the vocabulary's caption list with random unit "MiniLM"
    features: the run needs an embedding of every caption, and this keeps it independent of the shipped
    cache and of MiniLM."""
    import torch.nn.functional as F

    from src.data.text_cache import save_text_cache
    from src.embedded.training.clip_pairs import build_caption_list

    captions = build_caption_list()
    emb = F.normalize(torch.randn(len(captions), 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    return [f"model.text_cache_path={save_text_cache(tmp_path / 'text_cache.safetensors', captions, emb)}"]


def _generated_faces(tmp_path) -> list[str]:
    """model.generator_path and model.oracle_path of a tiny random 16 px generator and oracle."""
    from tests.test_clip_generated import tiny_generator_and_oracle

    G, oracle = tiny_generator_and_oracle(tmp_path)
    return [f"model.generator_path={G}", f"model.oracle_path={oracle}"]


def _last(run) -> dict:
    return torch.load(run / "run/checkpoints/last.ckpt", weights_only=True)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_stopped_task_resumes_to_the_uninterrupted_weights(task, tmp_path, capsys):
    from train import train

    overrides, steps, stop_at = TASKS[task]
    base = COMMON + overrides + (_text_cache(tmp_path) if task.startswith("clip") else [])
    base += _generated_faces(tmp_path) if task == "clip_generated" else []
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(compose_train(base + [f"trainer.max_steps={steps}"], whole))
    train(compose_train(base + [f"trainer.max_steps={stop_at}"], cut))
    assert _last(cut)["global_step"] == stop_at  # mid-epoch: 3 batches an epoch
    capsys.readouterr()
    train(compose_train(base + [f"trainer.max_steps={steps}"], cut))
    assert "resuming from" in capsys.readouterr().err  # continued, not started over
    a, b = _last(whole), _last(cut)
    assert a["global_step"] == b["global_step"] == steps
    assert _assert_bit_identical(a["state_dict"], b["state_dict"], "state_dict") > 4
    assert _assert_bit_identical(a["optimizer_states"], b["optimizer_states"], "optimizer_states") > 4
    for key in sorted(k for k in a if k.endswith("_progress")):  # the task's own counters (GAN: images, ADA p)
        _assert_bit_identical(a[key], b[key], key)
    if task == "stylegan":
        assert a["stylegan_progress"]["cur_nimg"] == steps // 2 * 4


@pytest.mark.gpu
@pytest.mark.parametrize("task", ["oracle", "stylegan"])
def test_a_stopped_task_resumes_on_the_gpu(task, tmp_path):
    """On CUDA: the same steps, counters and data order; weights equal within float tolerance."""
    from train import train

    overrides, steps, stop_at = TASKS[task]
    base = COMMON + overrides + ["hardware=gpu", "hardware.num_workers=0"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(compose_train(base + [f"trainer.max_steps={steps}"], whole))
    train(compose_train(base + [f"trainer.max_steps={stop_at}"], cut))
    train(compose_train(base + [f"trainer.max_steps={steps}"], cut))
    a, b = _last(whole), _last(cut)
    assert a["global_step"] == b["global_step"] == steps
    worst = assert_close_weights(a["state_dict"], b["state_dict"])
    print(f"{task}: largest weight difference after resume on {torch.cuda.get_device_name()}: {worst:.3g}")

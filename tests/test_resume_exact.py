"""A run stopped after a checkpoint and resumed ends with the weights and Adam state of the run that
was never stopped, bit for bit (CPU); the data modules of every task continue their streams."""
from __future__ import annotations

import itertools

import pytest
import torch

from tests.conftest import compose_train
from tests.test_train import tiny_overrides  # noqa: F401  (the module-scoped tiny-model fixture)

N = 6  # steps; 4 batches an epoch: the runs cross an epoch boundary
EXACT = ["seed=5", "test=false", "data.train_batches=4", "trainer.val_check_interval=2",
         "callbacks.model_checkpoint.every_n_train_steps=1",
         # two augmented views of the last frame: the step draws from the global RNG too
         "model.train.clip_views=1", "model.train.clip_view_noise=0.05"]


def _final_state(path) -> tuple[dict, list]:
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["global_step"] == N
    return ckpt["state_dict"], ckpt["optimizer_states"]


def _assert_bit_identical(a, b, where="") -> int:
    """Walk two nested structures; tensors must be equal bit for bit. Returns how many were compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max().item()}"
        return 1
    if isinstance(a, dict):
        assert set(a) == set(b), where
        return sum(_assert_bit_identical(a[k], b[k], f"{where}/{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return sum(_assert_bit_identical(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch after a validation step; the epoch's last batch
def test_stop_and_resume_gives_the_uninterrupted_weights(tiny_overrides, tmp_path, stop_at):
    from train import train

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(compose_train(tiny_overrides + EXACT + [f"trainer.max_steps={N}"], whole))
    # the stopped run: its last checkpoint is step `stop_at` (as after kill -9), then a rerun resumes it
    train(compose_train(tiny_overrides + EXACT + [f"trainer.max_steps={stop_at}"], cut))
    assert torch.load(cut / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == stop_at
    # a kill during a checkpoint write leaves its temporary file: the rerun removes ours, nothing else
    folder = cut / "run/checkpoints"
    cut_off = [folder / ".last.k1ll3d_9.tmp.ckpt", folder / f".step{stop_at:07d}.a8b7c6-4242-d5e4f3a2.tmp.ckpt"]
    for path in cut_off + [folder / "mine.tmp.ckpt"]:
        path.write_bytes(b"PK")
    train(compose_train(tiny_overrides + EXACT + [f"trainer.max_steps={N}"], cut))
    assert not any(p.exists() for p in cut_off) and (folder / "mine.tmp.ckpt").exists()

    weights, adam = _final_state(whole / "run/checkpoints/last.ckpt")
    weights2, adam2 = _final_state(cut / "run/checkpoints/last.ckpt")
    assert _assert_bit_identical(weights, weights2, "state_dict") > 4
    assert _assert_bit_identical(adam, adam2, "optimizer_states") > 8  # exp_avg, exp_avg_sq, step per tensor


def test_a_run_that_ends_between_checkpoints_saves_its_final_step(tiny_overrides, tmp_path):
    """max_steps reached between two periodic checkpoints: last.ckpt still holds the final step, and a
    longer rerun goes on from it to the uninterrupted run's weights."""
    from train import train

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    sparse = EXACT + ["callbacks.model_checkpoint.every_n_train_steps=1000", "trainer.val_check_interval=1000"]
    train(compose_train(tiny_overrides + sparse + [f"trainer.max_steps={N}"], whole))
    train(compose_train(tiny_overrides + sparse + ["trainer.max_steps=3"], cut))
    assert torch.load(cut / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    train(compose_train(tiny_overrides + sparse + [f"trainer.max_steps={N}"], cut))
    weights, adam = _final_state(whole / "run/checkpoints/last.ckpt")
    weights2, adam2 = _final_state(cut / "run/checkpoints/last.ckpt")
    assert _assert_bit_identical(weights, weights2, "state_dict") > 4
    assert _assert_bit_identical(adam, adam2, "optimizer_states") > 8


def test_resuming_with_another_architecture_is_one_line(tiny_overrides, tmp_path):
    from src.utils.errors import UserError
    from train import train

    train(compose_train(tiny_overrides + ["test=false", "trainer.max_steps=1"], tmp_path))
    with pytest.raises(UserError) as err:
        train(compose_train(tiny_overrides + ["test=false", "trainer.max_steps=2", "model.net.hidden=16"], tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'run/checkpoints/last.ckpt'} does not fit this config: ")
    assert "model.net.hidden was 8, now 16" in msg and "another name=" in msg and "old settings" in msg


# ----------------------------------------------------------------------------- data modules, by themselves

class _Trainer:
    """What a resumable loader reads of a trainer: the batches of the epoch it stepped through."""

    def __init__(self):
        from types import SimpleNamespace

        self.current = SimpleNamespace(processed=0)
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=self.current)))


def _epochs(loader, epochs, first_epoch=0):
    out = []
    for epoch in range(first_epoch, first_epoch + epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # what Lightning's fit loop does at every epoch start
        out += [_key(b) for b in loader]
    return out


def _key(batch):
    if isinstance(batch, dict):
        return tuple(batch["caption"]) + tuple(batch["seed"].tolist() if "seed" in batch else batch["params"].flatten()[:4].tolist())
    return int(batch)


def _resumed(make, k, state_epoch_batches):
    """A new loader from ``make`` restored at (epoch, k) as Lightning restores it."""
    loader = make()
    loader.load_state_dict(state_epoch_batches)
    return loader


@pytest.mark.parametrize("k", [0, 2, 5, 6])  # batches of epoch 1 done (6: the whole epoch)
def test_prompt_batches_continue_in_the_order_of_the_uninterrupted_run(k):
    from src.data.prompts import PromptDataModule

    def make():
        dm = PromptDataModule({"template": "The person is {}.", "concepts": list("abcdefg")}, batch_size=2, seed=3,
                              train_batches=6)
        return dm.train_dataloader()

    whole = _epochs(make(), 3)
    loader = make()
    loader.sampler.set_epoch(1)
    taken = list(itertools.islice(iter(loader), k))
    state = loader.state_dict()  # no trainer: the batches it handed out
    assert state == {"epoch": 1, "batches": k} and [_key(b) for b in taken] == whole[6:6 + k]
    resumed = _resumed(make, k, state)
    first_epoch = 2 if k == 6 else 1
    rest = [_key(b) for b in resumed]  # Lightning's set_epoch comes with the restored epoch: no call needed
    rest += _epochs(resumed, 3 - first_epoch - 1, first_epoch + 1)
    assert whole[:6 + k] + rest == whole


def test_the_state_follows_the_trainer_not_the_batches_fetched_ahead():
    from src.embedded.datamodule import RenderIndexDataModule

    dm = RenderIndexDataModule()  # endless 0, 1, 2, ...
    dm.trainer = _Trainer()
    loader = dm.train_dataloader()
    it = iter(loader)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    dm.trainer.current.processed = 3  # the loop fetched one batch ahead
    assert loader.state_dict()["batches"] == 3
    resumed = dm.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    assert list(itertools.islice(iter(resumed), 3)) == [3, 4, 5]
    assert list(itertools.islice(iter(resumed), 2)) == [0, 1]  # a later epoch starts at the beginning


def test_render_indices_with_epochs_continue():
    from src.embedded.datamodule import RenderIndexDataModule

    make = lambda: RenderIndexDataModule(steps_per_epoch=5).train_dataloader()  # noqa: E731
    assert _epochs(make(), 2) == [0, 1, 2, 3, 4] * 2
    resumed = _resumed(make, 3, {"epoch": 0, "batches": 3})
    assert [_key(b) for b in resumed] == [3, 4]


@pytest.mark.parametrize("workers", [0, 2])
def test_synthetic_stream_continues_with_any_number_of_workers(workers):
    from src.embedded.datamodule import SyntheticDataModule

    def make():
        return SyntheticDataModule(resolution=16, batch_size=2, num_workers=workers, seed=1, mode="gan",
                                   val_size=2, test_size=2).train_dataloader()

    whole = [_key(b) for b in itertools.islice(iter(make()), 7)]
    resumed = _resumed(make, 3, {"epoch": 0, "batches": 3})
    assert [_key(b) for b in itertools.islice(iter(resumed), 4)] == whole[3:]


def test_a_sampler_lightning_puts_in_restarts_at_its_start():
    from torch.utils.data import SequentialSampler

    from src.data.resume import ResumableLoader
    from src.embedded.datamodule import _Range

    data = _Range(4)  # overfit_batches: Lightning rebuilds the loader around a SequentialSampler
    loader = ResumableLoader(data, batch_size=None, sampler=SequentialSampler(data))
    loader.load_state_dict({"epoch": 0, "batches": 3})
    assert [int(b) for b in loader] == [0, 1, 2, 3] and loader.state_dict() == {"epoch": 0, "batches": 4}


def test_the_newest_of_last_and_the_slurm_requeue_checkpoint_is_resumed(tmp_path):
    import os

    from src.systems.resume import resume_checkpoint

    assert resume_checkpoint(tmp_path) is None
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_3.ckpt"
    last.parent.mkdir()
    for path, when in ((last, 100), (hpc, 200)):
        path.write_bytes(b"x")
        os.utime(path, ns=(when * 10**9, when * 10**9))
    assert resume_checkpoint(tmp_path) == hpc  # SIGUSR1 saved it after the last step checkpoint
    os.utime(last, ns=(300 * 10**9, 300 * 10**9))
    assert resume_checkpoint(tmp_path) == last


@pytest.mark.gpu
def test_stop_and_resume_on_the_gpu_gives_the_uninterrupted_weights(tiny_overrides, tmp_path):
    """The same stop-and-resume on CUDA with hardware.deterministic=true (deterministic cuDNN and
    cuBLAS algorithms): bit-identical weights and Adam state, the same steps and data order."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from train import train

    # short prompts: the tiny CLIP's 16-token context holds them under any BPE vocabulary
    gpu = tiny_overrides + EXACT + ["hardware=gpu", "hardware.num_workers=0", "hardware.deterministic=true",
                                    "domain.prompts.template='{}'"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(compose_train(gpu + [f"trainer.max_steps={N}"], whole))
    train(compose_train(gpu + ["trainer.max_steps=3"], cut))
    train(compose_train(gpu + [f"trainer.max_steps={N}"], cut))
    a = torch.load(whole / "run/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(cut / "run/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == N
    assert a["loops"]["fit_loop"]["state_dict"]["combined_loader"] == b["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    worst = assert_close_weights(a["state_dict"], b["state_dict"])
    print(f"largest weight difference after resume on {torch.cuda.get_device_name()}: {worst:.3g}")
    assert _assert_bit_identical(a["state_dict"], b["state_dict"], "state_dict") > 0
    assert _assert_bit_identical(a["optimizer_states"], b["optimizer_states"], "optimizer_states") > 0


def assert_close_weights(a: dict, b: dict, rel: float = 1e-5) -> float:
    """Every floating tensor of ``b`` within rel * (1 + max |a|) of ``a``; returns the largest difference."""
    worst = 0.0
    for k, v in a.items():
        if v.is_floating_point():
            diff = (v.double() - b[k].double()).abs().max().item()
            worst = max(worst, diff)
            assert diff <= rel * (1.0 + v.double().abs().max().item()), f"{k}: {diff}"
    return worst

"""Activation checkpointing of the frozen generator (``model.train.generator_checkpoint_res``): the
same images and latent gradients, a fraction of the saved activations, and the training setting."""
from __future__ import annotations

import pytest
import torch

from src.stylegan import Generator
from src.utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def generator() -> Generator:
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=64, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=1024, channel_max=64))
    return G.requires_grad_(False)


def run(G: Generator, ws: torch.Tensor, checkpoint_res: int, noise_mode: str):
    """(image, d loss / d ws, bytes autograd saved for the backward)."""
    G.synthesis.checkpoint_res = checkpoint_res
    w = ws.clone().requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(5)  # the random noise's draws
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        img = G.synthesis(w, noise_mode=noise_mode)
    (img.square().mean() + img[:, 0].mean()).backward()
    return img.detach(), w.grad, sum(saved)


@pytest.mark.parametrize("noise_mode", ["const", "random"])
def test_checkpointed_blocks_give_the_same_images_and_gradients(noise_mode):
    G = generator()
    ws = G.mapping(torch.randn(3, 32, generator=torch.Generator().manual_seed(1)), None)
    img0, grad0, saved0 = run(G, ws, 0, noise_mode)
    for res in (64, 16, 4):
        img, grad, saved = run(G, ws, res, noise_mode)
        assert torch.equal(img, img0) and torch.equal(grad, grad0), res  # recomputed, same RNG draws
        assert saved < saved0
    assert saved < saved0 / 4  # every block: only the blocks' inputs are kept


def test_no_checkpointing_without_gradients():
    G = generator()
    G.synthesis.checkpoint_res = 4
    ws = G.mapping(torch.randn(2, 32), None)
    calls = []
    G.synthesis.b8.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        G.synthesis(ws, noise_mode="const")
    G.synthesis(ws, noise_mode="const")  # ws without grad: nothing to recompute for
    assert len(calls) == 2


def test_the_training_setting_reaches_the_generator_and_bad_values_are_one_line():
    from tests.test_animator_system import build

    m = build("ours", generator_checkpoint_res=8)
    assert m.generator.synthesis.checkpoint_res == 8
    assert build("ours").generator.synthesis.checkpoint_res == 0
    for bad in (3, 12, -4):
        with pytest.raises(UserError, match="generator_checkpoint_res must be 0 or a power of two"):
            build("ours", generator_checkpoint_res=bad)


def test_a_checkpointed_training_step_has_the_same_gradients():
    from tests.test_animator_system import build

    batch = {"caption": ["The person is smiling.", "The person is angry."], "seed": torch.tensor([4, 5])}
    grads = []
    for res in (0, 4):
        m = build("ours", generator_checkpoint_res=res)
        total, _, _ = m.compute_losses(batch)
        total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.animator.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_with_fp16_blocks_and_random_noise():
    from tests.gpu_helpers import small_cuda_generator

    G, ws = small_cuda_generator(num_fp16_res=2)
    img0, grad0, saved0 = run(G, ws, 0, "random")
    img, grad, saved = run(G, ws, 32, "random")
    assert saved < saved0 / 2
    scale = float(grad0.abs().max())
    assert float((img - img0).abs().max()) <= 1e-2 and float((grad - grad0).abs().max()) <= 1e-2 * scale

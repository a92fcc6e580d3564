"""DDP training of the animator equals one process on the union batch.

k ranks with B samples each and one process with k*B samples must reach the same weights: the
contrastive loss contrasts against the GLOBAL batch's distinct prompts (``candidates``), the data
module hands every rank its slice of the same global batches in the same order, and h_0 is drawn
per sample from the sample's own seed.
"""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from src.data.prompts import PromptBatches, PromptDataModule, SameOrderOnEveryRank
from src.losses.animator import contrastive_clip_loss, similarity_matrix
from src.systems.animator import AnimatorModule
from src.utils.errors import UserError
from tests.test_animator import PAPER_LOSS, groups, tiny_clip_model, tiny_domain, tiny_generator

PROMPTS = [f"The person is {c}." for c in ("smiling", "angry", "winking", "crying", "pouting")]
NO_LPIPS = {**PAPER_LOSS, "lpips": 0.0}


# ---------------------------------------------------------------- loss
def _embeddings(n: int, m: int, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)


def test_candidates_form_equals_the_batch_local_form():
    img, txt = _embeddings(5, 5)
    old = contrastive_clip_loss(img, txt, 0.07)
    assert torch.equal(contrastive_clip_loss(img, txt, 0.07, positive=torch.arange(5)), old)
    perm = torch.tensor([3, 0, 4, 1, 2])  # the same candidates in another order
    torch.testing.assert_close(contrastive_clip_loss(img, txt[perm], 0.07, positive=perm.argsort()), old,
                               rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="positive"):
        contrastive_clip_loss(img, txt[:3], 0.07)


def test_duplicate_prompts_are_one_candidate_not_their_own_negative():
    img, txt = _embeddings(3, 2, seed=1)  # images 0 and 2 share prompt 0
    positive = torch.tensor([0, 1, 0])
    tau = 0.5
    s = similarity_matrix(img, txt)
    by_hand = sum(math.log(1 + sum(math.exp((s[i, j] - s[i, positive[i]]) / tau) for j in range(2)))
                  for i in range(3)) / 3
    assert contrastive_clip_loss(img, txt, tau, positive=positive).item() == pytest.approx(by_hand, rel=1e-6)
    # the batch-local form with a repeated text row would count the duplicate as a negative (+exp(0))
    assert contrastive_clip_loss(img, txt[positive], tau) > contrastive_clip_loss(img, txt, tau, positive=positive)


def test_mean_of_rank_losses_has_the_gradient_of_the_union_loss():
    img, txt = _embeddings(6, 4, seed=2)
    positive = torch.tensor([0, 1, 2, 3, 0, 2])

    def grads(split: bool):
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        if split:  # two ranks of 3 rows each, same candidates; DDP averages their gradients
            loss = (contrastive_clip_loss(i[:3], t, 0.1, positive=positive[:3])
                    + contrastive_clip_loss(i[3:], t, 0.1, positive=positive[3:])) / 2
        else:
            loss = contrastive_clip_loss(i, t, 0.1, positive=positive)
        loss.backward()
        return loss.detach(), i.grad, t.grad

    for a, b in zip(grads(True), grads(False)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- data
def _old_item(prompts, batch_size, seed, split, index, latents=None):
    """PromptBatches.__getitem__ as it was before global batches (batch_size <= len(prompts))."""
    offset = {"train": 0, "val": 1_000_003, "test": 2_000_003}[split]
    g = torch.Generator().manual_seed((seed + offset) * 7919 + index)
    concept = torch.randperm(len(prompts), generator=g)[:batch_size]
    seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=g)
    item = dict(caption=[prompts[int(c)] for c in concept], concept=concept, seed=seeds)
    if latents is not None:
        item["ws"] = latents[torch.randint(0, len(latents), (batch_size,), generator=g)]
    return item


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] if isinstance(a[k], list) else torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_world1_items_are_unchanged(split):
    bank = torch.randn(10, 3, 4)
    for batch_size, latents in ((3, None), (5, None), (2, bank)):
        ds = PromptBatches(PROMPTS, batch_size, 6, seed=7, split=split, latents=latents)
        for i in range(6):
            item = ds[i]
            assert item.pop("candidates") == item["caption"]  # new key: distinct prompts in batch order
            assert _same(item, _old_item(PROMPTS, batch_size, 7, split, i, latents))


@pytest.mark.parametrize("batch_size", [2, 3, 4])  # global batches 4 (distinct), 6 and 8 (> 5 prompts)
def test_rank_slices_are_the_world1_batch_of_the_global_size(batch_size):
    bank = torch.randn(10, 3, 4)
    single = PromptBatches(PROMPTS, 2 * batch_size, 4, seed=3, split="train", latents=bank)
    ranks = [PromptBatches(PROMPTS, batch_size, 4, seed=3, split="train", latents=bank, rank=r, world_size=2)
             for r in range(2)]
    for i in range(4):
        whole = single[i]
        parts = [ds[i] for ds in ranks]
        lo_hi = [(0, batch_size), (batch_size, 2 * batch_size)]
        for part, (lo, hi) in zip(parts, lo_hi):
            assert part["candidates"] == whole["candidates"]
            assert _same({k: v for k, v in part.items() if k != "candidates"},
                         {k: v[lo:hi] for k, v in whole.items() if k != "candidates"})
        # distinct when the global batch fits the prompts; else every prompt at most ceil(G/P) times
        counts = [whole["caption"].count(p) for p in PROMPTS]
        assert max(counts) == math.ceil(2 * batch_size / len(PROMPTS))
        assert sorted(whole["candidates"]) == sorted(set(whole["caption"]))


def _seed_stream(loader: DataLoader, epochs: int = 2) -> list[list[int]]:
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # what Lightning's fit loop does at every epoch start
        out += [b["seed"].tolist() for b in loader]
    return out


def test_every_rank_iterates_the_same_global_batches_and_workers_keep_the_order():
    cfg = {"template": "The person is {}.", "concepts": ["smiling", "angry", "winking", "crying", "pouting"]}
    single = PromptDataModule(cfg, batch_size=4, seed=5, train_batches=6).train_dataloader()
    assert isinstance(single.sampler, SameOrderOnEveryRank)  # a DistributedSampler: Lightning keeps it
    ranks = [PromptDataModule(cfg, batch_size=2, seed=5, train_batches=6, rank=r, world_size=2).train_dataloader()
             for r in range(2)]
    whole = _seed_stream(single)
    parts = [_seed_stream(dl) for dl in ranks]
    assert [a + b for a, b in zip(*parts)] == whole
    assert whole[:6] != whole[6:]  # a new order per epoch ...
    assert sorted(map(tuple, whole[:6])) == sorted(map(tuple, whole[6:]))  # ... of the same batches
    workers = PromptDataModule(cfg, batch_size=4, seed=5, train_batches=6, num_workers=2).train_dataloader()
    assert _seed_stream(workers) == whole


# ---------------------------------------------------------------- the module
def _module(**kw) -> AnimatorModule:
    torch.manual_seed(0)
    loss = kw.pop("loss", NO_LPIPS)
    modules = {k: kw.pop(k) for k in ("loss_clip",) if k in kw}
    settings = groups(**{**dict(hidden=8, train_frames=4, val_frames=4, video_every_n_steps=0), **kw})
    return AnimatorModule(domain=tiny_domain(), loss=loss, generator=tiny_generator(), clip=tiny_clip_model(),
                          **settings, **modules)


def test_compute_losses_is_split_invariant():
    m = _module()
    ds = PromptBatches(PROMPTS, 6, 1, seed=0, split="train")  # 6 > 5 prompts: one prompt twice
    whole = ds[0]
    total, terms, out = m.compute_losses(whole)
    halves = [PromptBatches(PROMPTS, 3, 1, seed=0, split="train", rank=r, world_size=2)[0] for r in range(2)]
    results = [m.compute_losses(h) for h in halves]
    torch.testing.assert_close(torch.cat([r[2]["ws"] for r in results]), out["ws"], rtol=1e-5, atol=1e-6)
    for k in terms:  # each term is a mean over equal halves
        torch.testing.assert_close((results[0][1][k] + results[1][1][k]) / 2, terms[k], rtol=1e-5, atol=1e-6)


def test_h0_is_drawn_per_sample():
    anim = _module().animator.train()
    h = anim.initial_hidden(3, "cpu", torch.float32, seeds=torch.tensor([5, 6, 7]))
    torch.testing.assert_close(anim.initial_hidden(1, "cpu", torch.float32, seeds=[6])[0], h[1], rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)  # one generator for the batch (animate()) as before
    torch.testing.assert_close(anim.initial_hidden(2, "cpu", torch.float32, generator=g),
                               0.01 * torch.randn(2, 8, generator=torch.Generator().manual_seed(1)))


def test_contrastive_candidates_checks():
    m = _module()
    dup = {"caption": [PROMPTS[0], PROMPTS[1], PROMPTS[0]], "seed": torch.tensor([1, 2, 3])}
    with pytest.raises(UserError, match="distinct prompts"):
        m.compute_losses(dup)
    _, terms, _ = m.compute_losses({**dup, "candidates": PROMPTS[:3]})
    assert torch.isfinite(terms["contrastive"])
    with pytest.raises(UserError, match="lacks"):
        m.compute_losses({**dup, "candidates": PROMPTS[1:3]})
    with pytest.raises(UserError, match="distinct"):
        m.compute_losses({**dup, "candidates": [PROMPTS[0], PROMPTS[1], PROMPTS[0]]})


def test_training_step_runs_under_deterministic_algorithms():
    m = _module(clip_finetune="text", clip_lr=1e-4, loss_clip=tiny_clip_model(seed=1))
    batch = PromptBatches(PROMPTS, 3, 1, seed=0, split="train")[0]
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        total, _, _ = m.compute_losses(batch)
        total.backward()
    finally:
        torch.use_deterministic_algorithms(was)


# ---------------------------------------------------------------- end to end: 2 ranks x B == 1 process x 2B
class SGDAnimator(AnimatorModule):
    """The real module with plain SGD. Why not its Adam (betas (0, 0.999)): Adam's step is about
    lr * g / |g| per weight, so weights whose true gradient is ~0 (the attention key bias, exactly 0;
    the motion mapper's biases, where M(d_t) - M(0) nearly cancels) step by +-lr on rounding noise,
    which differs between a sum over 2B rows and two sums over B rows. SGD keeps rounding noise at
    the noise's size, so the weights show whether the gradients are those of the union batch."""

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


class SaveTrainable(pl.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, module):
        torch.save({k: v.detach().clone() for k, v in module.trainable_state_dict().items()},
                   f"{self.path}.{trainer.global_rank}")


def _sgd_module() -> SGDAnimator:
    # text tower fine-tuned too: its gradients then flow through the candidates of every rank
    torch.manual_seed(0)
    return SGDAnimator(domain=tiny_domain(), loss=NO_LPIPS,
                       **groups(hidden=8, train_frames=4, val_frames=4, video_every_n_steps=0, clip_finetune="text", clip_lr=0.1),
                       generator=tiny_generator(), clip=tiny_clip_model(), loss_clip=tiny_clip_model(seed=1))


def _fit(devices: int, batch_size: int, path: str) -> None:
    # 5 prompts, global batch 6: prompts repeat across ranks; 2 batches per epoch: 3 steps cross an epoch
    dm = PromptDataModule(tiny_domain()["prompts"], batch_size=batch_size, seed=3, train_batches=2,
                          val_batches=1, test_batches=1)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         deterministic=True, callbacks=[SaveTrainable(path)])  # use_distributed_sampler: default
    trainer.fit(_sgd_module(), datamodule=dm)


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_union_batch(tmp_path):
    _fit(2, 3, str(tmp_path / "ddp"))
    _fit(1, 6, str(tmp_path / "single"))
    ranks = [torch.load(tmp_path / f"ddp.{r}", weights_only=True) for r in range(2)]
    single = torch.load(tmp_path / "single.0", weights_only=True)
    assert any(k.startswith("clip.") for k in single) and any(k.startswith("animator.") for k in single)
    start = _sgd_module().trainable_state_dict()
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    assert moved > 1e-3  # training moved the weights well beyond the tolerance
    for k in single:
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][k], single[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")

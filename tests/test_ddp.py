"""A 2-process DDP run on CPU (gloo, ddp_spawn): gradients are synchronised across ranks."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset


class RankData(Dataset):
    """32 fixed samples; DistributedSampler gives each rank a different half."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = torch.randn(32, 1, generator=g)

    def __len__(self):
        return 32

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Linear(pl.LightningModule):
    def __init__(self, batch: int, out_path: str | None = None):
        super().__init__()
        self.batch = batch
        self.layer = torch.nn.Linear(4, 1)
        torch.nn.init.zeros_(self.layer.weight)
        torch.nn.init.zeros_(self.layer.bias)
        self.out_path = out_path

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def train_dataloader(self):
        # rank r takes samples r, r+W, r+2W, ... in order (Lightning's own sampler would shuffle)
        sampler = torch.utils.data.DistributedSampler(RankData(), num_replicas=self.trainer.world_size,
                                                      rank=self.global_rank, shuffle=False)
        return DataLoader(RankData(), batch_size=self.batch, sampler=sampler)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        if self.out_path:
            torch.save({k: v.detach().clone() for k, v in self.state_dict().items()}, f"{self.out_path}.{self.global_rank}")


def _fit(devices, batch, out, strategy):
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(Linear(batch, out))


def test_ddp_spawn_two_processes_sync_gradients(tmp_path):
    _fit(2, 4, str(tmp_path / "ddp"), "ddp_spawn")
    w0 = torch.load(tmp_path / "ddp.0", weights_only=True)
    w1 = torch.load(tmp_path / "ddp.1", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"{k} differs between ranks: gradients were not synchronised"
    assert w0["layer.weight"].abs().sum() > 0  # training moved the weights
    # The DDP average of the two ranks' gradients equals one process on the union of their batches.
    # DistributedSampler (no shuffle) interleaves: rank r takes samples r, r+2, ...; over 3 steps of 4
    # per rank the union is the first 24 samples in batches of 8.
    _fit(1, 8, str(tmp_path / "single"), "auto")
    single = torch.load(tmp_path / "single.0", weights_only=True)
    for k in w0:
        torch.testing.assert_close(w0[k], single[k], rtol=1e-5, atol=1e-6)

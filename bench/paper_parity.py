"""Our paper mode against the authors' own code, on the same random weights and inputs.

    python bench/paper_parity.py --authors /path/to/language-guided-animation [--device cuda]

``--authors``: a checkout of researchmm/language-guided-animation (not part of this project; fetch it
yourself). Its recurrent generator (``src/models/rnn.py``), its mappers (``src/models/modelv1.py``),
its model's forward and its contrastive CLIP loss (``src/criteria/losses.py``) are imported and run
as they are. Three things it needs are replaced, none of which computes anything compared here:
OpenAI's ``clip`` package (only ``tokenize`` is used: open_clip's tokenizer, the same BPE), the
CLIP networks (a fixed random projection of pixels and tokens, given to both sides) and the JIT
CUDA kernel of the fused leaky ReLU (``leaky_relu(x + b, 0.2) * sqrt(2)`` in PyTorch). Prints the
largest differences of the W+ offsets (training and inference step sizes, text+image and
text-only) and of each loss term; exit code 1 if any is over its tolerance (1e-4 absolute for
offsets, 1e-4 relative for losses).
"""
from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.losses.animator import (contrastive_clip_loss, endpoint_loss, latent_reg_loss,  # noqa: E402
                                 smoothness_loss)
from src.networks.animator import RecurrentAnimator  # noqa: E402
from src.networks.clip_encoder import ClipEncoder  # noqa: E402
from src.pipeline.authors_checkpoint import AUTHORS_KEYS  # noqa: E402


def install_stubs() -> None:
    """The replacements named in the module docstring, registered before the authors' modules import."""
    import open_clip

    tok = open_clip.tokenizer.SimpleTokenizer()
    clip_stub = types.ModuleType("clip")
    clip_stub.tokenize = lambda texts, context_length=77: tok(texts if isinstance(texts, list) else [texts],
                                                             context_length=context_length)
    clip_stub.load = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CLIP weights are not loaded here"))
    sys.modules["clip"] = clip_stub

    def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
        shape = [1, -1] + [1] * (x.ndim - 2)
        return F.leaky_relu(x + bias.view(shape), negative_slope) * scale

    op = types.ModuleType("stylegan2.op")
    op.fused_leaky_relu = fused_leaky_relu
    op.FusedLeakyReLU = nn.Identity
    op.upfirdn2d = None
    sys.modules["stylegan2.op"] = op


class StubClip(nn.Module):
    """open_clip-style encoder: a fixed random projection of 224 px pixels and of token ids."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pix = nn.Parameter(torch.randn(dim, 3 * 16 * 16, generator=g) / 28.0)
        self.tok = nn.Parameter(torch.randn(49408, dim, generator=g))
        self.visual = types.SimpleNamespace(image_size=224, output_dim=dim)
        self.embed_dim, self.context_length = dim, 77

    def encode_image(self, x):
        return F.adaptive_avg_pool2d(x, 16).flatten(1) @ self.pix.t()

    def encode_text(self, tokens):
        return (self.tok[tokens.long()] * (tokens != 0)[..., None]).sum(dim=1)


def authors_criteria(folder: Path) -> types.ModuleType:
    """Their ``src/criteria`` package under another name (this project's package is ``src`` too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("authors_criteria", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["authors_criteria"] = module
    spec.loader.exec_module(module)
    return module


def copy_authors_weights(ours: RecurrentAnimator, model: nn.Module) -> None:
    """Their model's rnn/mapper weights into ours, by the converter's key correspondence."""
    theirs = model.state_dict()
    ours.load_state_dict({k: theirs[AUTHORS_KEYS[k]].detach().clone() for k in ours.state_dict()}, strict=True)


def report(name: str, ours: torch.Tensor, theirs: torch.Tensor, tol: float, relative: bool) -> bool:
    diff = (ours.double() - theirs.double()).abs().max().item()
    scale = theirs.double().abs().max().item() if relative else 1.0
    err = diff / max(scale, 1e-12)
    ok = err <= tol
    kind = "relative" if relative else "absolute"
    print(f"{name:<44} ours {ours.double().abs().max().item():11.6g}  theirs "
          f"{theirs.double().abs().max().item():11.6g}  {kind} diff {err:.2e}  {'ok' if ok else 'OVER ' + str(tol)}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors", required=True, help="checkout of researchmm/language-guided-animation")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--num-ws", type=int, default=18)
    args = ap.parse_args()
    models = Path(args.authors).expanduser() / "src" / "models"
    if not (models / "rnn.py").is_file():
        print(f"error: {args.authors}: not a checkout of the authors' code (no src/models/rnn.py)")
        return 2
    install_stubs()
    sys.path.insert(0, str(models))
    if args.device == "cpu":  # their h_0 is moved with .cuda(z.get_device()): a no-op on a CPU run
        torch.Tensor.cuda = lambda self, *a, **k: self
    import modelv1  # noqa: E402  (the authors' module)
    from rnn import LatentRecurrent  # noqa: E402

    dev, n, L, D = torch.device(args.device), args.batch, args.num_ws, 1024
    torch.manual_seed(0)
    rnn, mapper = LatentRecurrent(z_dim=D).to(dev), modelv1.Mapper(1024, embed_dim=D, num_layers=L).to(dev)
    enc = StubClip(D, seed=1).to(dev)
    model = modelv1.UniEditModelv1.__new__(modelv1.UniEditModelv1)
    nn.Module.__init__(model)
    model.encoder, model.rnn, model.mapper = enc, rnn, mapper
    prompts = ["The person is smiling.", "The person is angry.", "The person is winking.", "The person is crying."][:n]
    tokens = sys.modules["clip"].tokenize(prompts).to(dev)
    photo = (torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 2 - 1).to(dev)
    w_e4e = torch.randn(n, L, 512, generator=torch.Generator().manual_seed(3)).to(dev)
    ok = True
    for image_branch in (True, False):
        ours = RecurrentAnimator(D, L, 512, hidden=384, variant="paper", mapper_hidden=1024, rnn_slope=0.01,
                                 image_branch=image_branch).to(dev)
        copy_authors_weights(ours, model)
        txt_e, img_e = F.normalize(enc.encode_text(tokens), dim=1), F.normalize(enc.encode_image(photo), dim=1)
        for frames, inference in ((4, False), (16, True)):
            model.n_frames = frames
            torch.manual_seed(10 + frames)
            img_ws, txt_ws = model(photo if image_branch else None, tokens, is_inference=inference,
                                   choice="linear" if inference else None)
            txt_ws = txt_ws.view(n, frames, L, 512)
            theirs = (img_ws[:, None] + txt_ws) if img_ws is not None else txt_ws
            h0 = torch.randn(n, 384, generator=torch.Generator().manual_seed(10 + frames)).to(dev) * 0.01
            out = ours(w_e4e, txt_e, img_e if image_branch else None, frames, decay="linear" if inference else "none",
                       h0=h0)
            mode = f"{'text+image' if image_branch else 'text-only'}, {frames} frames{' (inference)' if inference else ''}"
            ok &= report(f"W+ offsets, {mode}", out["offsets"], theirs, 1e-4, relative=False)
            if inference:
                continue
            # the loss terms of their training step, on their tensors (formulas of tools/dist_train.py)
            edit = (img_ws[:, None] + txt_ws if img_ws is not None else txt_ws) + w_e4e[:, None]
            their_smooth = F.mse_loss(txt_ws[:, 2:] - txt_ws[:, 1:-1], txt_ws[:, 1:-1] - txt_ws[:, :-2])
            their_end = F.mse_loss(txt_ws[:, 0], txt_ws[:, -1])
            their_latent = sum(F.mse_loss(edit[:, t], w_e4e) for t in range(frames))
            ok &= report(f"smoothness, {mode}", smoothness_loss(out["motion_offsets"]), their_smooth, 1e-4, True)
            ok &= report(f"first/last, {mode}", endpoint_loss(out["motion_offsets"]), their_end, 1e-4, True)
            ok &= report(f"latent (sum over frames), {mode}", latent_reg_loss(out["ws"], w_e4e, "sum"),
                         their_latent, 1e-4, True)
    # the contrastive CLIP loss on pooled frames: their CLIPLoss_modified with the stub CLIP
    CLIPLoss_modified = authors_criteria(models.parent / "criteria").losses.CLIPLoss_modified
    # frames that differ in their coarse content, so that the similarities differ (values beyond [-1, 1]
    # as a generator's frames have: neither side clamps)
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2.4 - 1.2
    fine = torch.rand(n, 3, 1024, 1024, generator=torch.Generator().manual_seed(6)) * 0.2 - 0.1
    frames_hr = (F.interpolate(coarse, size=1024, mode="bilinear") + fine).to(dev)
    loss_enc = StubClip(512, seed=5).to(dev)
    theirs_loss = CLIPLoss_modified.__new__(CLIPLoss_modified)
    nn.Module.__init__(theirs_loss)
    theirs_loss.size, theirs_loss.model, theirs_loss.temperature, theirs_loss.contrastive = (224, 224), loss_enc, 0.07, True
    theirs_loss.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1).to(dev))
    theirs_loss.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1).to(dev))
    their_c = theirs_loss(nn.AdaptiveAvgPool2d(224)(frames_hr), prompts)
    lc = ClipEncoder(loss_enc, kind="module")
    our_c = contrastive_clip_loss(lc.encode_image(frames_hr, resize="pool"), lc.encode_text(prompts), 0.07)
    ok &= report("contrastive CLIP loss (pooled 1024 px frames)", our_c, their_c, 1e-4, True)
    print(f"  (log(1 + {n}) = {math.log(1 + n):.4f} would mean equal similarities: the check would be void)")
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}; "
          f"{'all within tolerance' if ok else 'DIFFERENCES OVER TOLERANCE'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

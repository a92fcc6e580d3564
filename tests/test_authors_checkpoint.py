"""The authors' checkpoints as animator files: a fake Iter_XXXXXX.pth with their key names (a tiny
ResNet CLIP, small RNN and mappers, a 16 px generator with their w_dim 512), converted and animated;
the animator must compute the authors' formulas (the method as the authors' code has it), written out
here again in float64."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import animate
from src.networks.clip_encoder import ClipEncoder
from src.pipeline import FaceAnimator
from src.pipeline.authors_checkpoint import convert, main, openai_activation, read_authors_checkpoint
from src.utils.errors import UserError

TINY_RN = "lgfa-test-tiny-rn-clip"
TINY_RN_CFG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
HIDDEN, MAPPER_HIDDEN, NUM_WS = 16, 64, 6
SMALL = [f"domain.clip.model_name={TINY_RN}", "domain.resolution=16", f"model.net.hidden={HIDDEN}",
         f"model.net.mapper_hidden={MAPPER_HIDDEN}"]
PROMPT = "The person is smiling."


def tiny_rn_clip(seed: int):
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**TINY_RN_CFG).eval()
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=16)


def tiny_generator_512():
    """A random 16 px generator whose w_dim is the authors' 512 (num_ws 6)."""
    from src.stylegan import Generator

    torch.manual_seed(0)
    return Generator(z_dim=16, c_dim=0, w_dim=512, img_resolution=16, img_channels=3,
                     mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """Register the tiny CLIP config with open_clip; write an authors'-format checkpoint."""
    import open_clip

    tmp = tmp_path_factory.mktemp("authors")
    if TINY_RN not in open_clip.list_models():
        (tmp / f"{TINY_RN}.json").write_text(json.dumps(TINY_RN_CFG))
        open_clip.add_model_config(tmp / f"{TINY_RN}.json")
    g = torch.Generator().manual_seed(7)
    encoder, _ = tiny_rn_clip(seed=3)
    enc = encoder.state_dict()
    for k, v in enc.items():  # fine-tuned weights and BatchNorm statistics of their own
        enc[k] = v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 17
    D = TINY_RN_CFG["embed_dim"]
    state = {f"module.encoder.{k}": v for k, v in enc.items()}
    for i, (o, n) in {1: (HIDDEN, D), 2: (D, 2 * HIDDEN), 3: (HIDDEN, 2 * HIDDEN)}.items():
        state[f"module.rnn.fc{i}.weight"] = torch.randn(o, n, generator=g) / math.sqrt(n)
        state[f"module.rnn.fc{i}.bias"] = 0.1 * torch.randn(o, generator=g)
    for m in ("t_mapper", "v_mapper"):
        for i, (o, n) in {1: (MAPPER_HIDDEN, D), 2: (MAPPER_HIDDEN, MAPPER_HIDDEN), 3: (512 * NUM_WS, MAPPER_HIDDEN)}.items():
            state[f"module.mapper.{m}.{i}.weight"] = torch.randn(o, n, generator=g)
            state[f"module.mapper.{m}.{i}.bias"] = 0.1 * torch.randn(o, generator=g)
    path = tmp / "Iter_005000.pth"
    torch.save({"iter": 5000, "arch": TINY_RN, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               path)
    theirs = {k[len("module."):]: v for k, v in state.items()}
    return dict(tmp=tmp, path=path, state=theirs, encoder=enc)


def authors_ws(sd, w, text_emb, image_emb, h0, T):
    """The authors' forward at inference (linear decay) from the paper's formulas, in float64:
    z0 = e_txt (+ e_img); u = [lrelu(W1 z); h]; z += r lrelu(W2 u); h += r lrelu(W3 u), slope 0.01,
    r_t = 0.8 / T * (T - t) / T; w_t = w + M_v(e_img) + M_t(z_t - z0)."""
    sd = {k: v.double() for k, v in sd.items()}

    def lrelu(x, slope):
        return torch.where(x >= 0, x, slope * x)

    def fc(x, name):
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def mapper(name, x):
        x = x / torch.sqrt((x * x).mean(dim=1, keepdim=True) + 1e-8)  # PixelNorm
        for i in (1, 2, 3):  # equalised linear: weight / sqrt(fan_in), then lrelu(., 0.2) * sqrt(2)
            weight = sd[f"mapper.{name}.{i}.weight"]
            x = lrelu(x @ (weight / math.sqrt(weight.shape[1])).T + sd[f"mapper.{name}.{i}.bias"], 0.2) * math.sqrt(2)
        return x.view(x.shape[0], -1, 512)

    z0 = text_emb.double() + (image_emb.double() if image_emb is not None else 0)
    z, h, motion = z0, h0.double(), [torch.zeros_like(z0)]
    for t in range(1, T):
        r = 0.8 / T * (T - t) / T
        u = torch.cat([lrelu(fc(z, "rnn.fc1"), 0.01), h], dim=1)
        z, h = z + r * lrelu(fc(u, "rnn.fc2"), 0.01), h + r * lrelu(fc(u, "rnn.fc3"), 0.01)
        motion.append(z - z0)
    offsets = torch.stack([mapper("t_mapper", d) for d in motion], dim=1)
    if image_emb is not None:
        offsets = offsets + mapper("v_mapper", image_emb.double())[:, None]
    return w.double()[:, None] + offsets


@pytest.mark.parametrize("experiment", ["human_paper", "metfaces_paper"])
def test_converted_animator_computes_the_authors_forward(fake, tmp_path, experiment):
    out = convert(fake["path"], tmp_path / "a.safetensors", experiment=experiment, overrides=SMALL)
    base, tok = tiny_rn_clip(seed=11)
    pipe = FaceAnimator.from_pretrained(out["path"], generator=tiny_generator_512(),
                                        clip=ClipEncoder.wrap_open_clip(base, tok))
    text_only = experiment == "metfaces_paper"
    assert pipe.animator.image_branch is not text_only and pipe.animator.variant == "paper"
    # the fine-tuned CLIP: all of it (BatchNorm statistics included), or its text tower alone
    loaded = pipe.clip.model.state_dict()
    for k, v in fake["encoder"].items():
        replaced = not text_only or not (k.startswith("visual.") or k == "logit_scale")
        assert torch.equal(loaded[k], v) is replaced, k
    w = pipe.sample_latents(2, seed=1)
    text_emb = pipe.clip.encode_text([PROMPT, "The person is angry."])
    image_emb = None if text_only else pipe.clip.encode_image(pipe.render_image(w))
    h0 = 0.01 * torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(5))
    ours = pipe.animator(w, text_emb, image_emb, 16, decay="linear", h0=h0)["ws"]
    theirs = authors_ws(fake["state"], w, text_emb, image_emb, h0, 16)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-5)
    # the recorded inference defaults are theirs too: animate() = 16 frames, r_t = 0.8 / T * decay
    seeded_h0 = 0.01 * torch.randn(1, HIDDEN, generator=torch.Generator().manual_seed(3))
    got = pipe.animate(w[:1], PROMPT, num_frames=16, seed=3)["ws"]
    want = authors_ws(fake["state"], w[:1], text_emb[:1], None if text_only else image_emb[:1], seeded_h0, 16)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert pipe.config["converted_from"]["iter"] == 5000 and len(pipe.config["converted_from"]["sha256"]) == 64


def test_without_module_prefix_and_from_files_through_animate_py(fake, tmp_path, capsys):
    from src.stylegan import save_generator

    plain_path = tmp_path / "plain.pth"
    torch.save({"iter": 7, "arch": TINY_RN, "state_dict": fake["state"]}, plain_path)
    assert read_authors_checkpoint(plain_path)["state_dict"].keys() == fake["state"].keys()
    g_path = save_generator(tiny_generator_512(), tmp_path / "G")
    clip_path = tmp_path / "clip.pt"
    torch.save(tiny_rn_clip(seed=11)[0].state_dict(), clip_path)
    out = tmp_path / "authors.safetensors"
    rc = main([str(plain_path), str(out), f"domain.generator.checkpoint={g_path}",
               f"domain.clip.pretrained={clip_path}", *SMALL])
    line = capsys.readouterr().out.strip()
    assert rc == 0 and line.startswith(f"wrote {out}") and "\n" not in line and "text+image" in line
    pipe = FaceAnimator.from_pretrained(out)  # the user's generator and CLIP files, no hash pinned
    assert torch.equal(pipe.clip.model.state_dict()["visual.bn1.running_mean"],
                       fake["encoder"]["visual.bn1.running_mean"])
    video = tmp_path / "v.gif"
    rc = animate.main([f"checkpoint={out}", "seed=2", "frames=4", f"output={video}", "strip=false"])
    assert rc == 0, capsys.readouterr().err
    assert video.is_file()


def _assert_cli_error(args, out, capsys, needle):
    rc = main([*map(str, args), str(out), *SMALL])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not out.exists() and not [p for p in out.parent.iterdir() if ".tmp" in p.name]


def test_bad_files_are_one_line_errors(fake, tmp_path, capsys):
    out = tmp_path / "o" / "x.safetensors"
    out.parent.mkdir()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    _assert_cli_error([junk], out, capsys, "expected the authors' training checkpoint")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "thing": Path("/")}, unsafe)  # needs code to unpickle: never run
    _assert_cli_error([unsafe], out, capsys, "not a loadable checkpoint")
    _assert_cli_error([tmp_path / "missing.pth"], out, capsys, "not found")


def test_state_dict_without_rnn_keys(fake, tmp_path, capsys):
    no_rnn = tmp_path / "no_rnn.pth"
    torch.save({"iter": 1, "state_dict": {k: v for k, v in fake["state"].items() if not k.startswith("rnn.")}}, no_rnn)
    with pytest.raises(UserError, match="no rnn.fc1.weight"):
        read_authors_checkpoint(no_rnn)
    _assert_cli_error([no_rnn], tmp_path / "x.safetensors", capsys, "no rnn.fc1.weight")


def test_wrong_mapper_and_rnn_sizes(fake, tmp_path, capsys):
    def variant(name, **changed):
        path = tmp_path / name
        torch.save({"iter": 1, "arch": TINY_RN, "state_dict": {**fake["state"], **changed}}, path)
        return path

    rows = variant("rows.pth", **{"mapper.t_mapper.3.weight": torch.zeros(512 * NUM_WS + 3, MAPPER_HIDDEN)})
    _assert_cli_error([rows], tmp_path / "x.safetensors", capsys, "not 512 x num_ws")
    layers = variant("layers.pth", **{"mapper.t_mapper.3.weight": torch.zeros(512 * 8, MAPPER_HIDDEN),
                                      "mapper.t_mapper.3.bias": torch.zeros(512 * 8)})
    _assert_cli_error([layers], tmp_path / "x.safetensors", capsys, "write 8 W+ layers")
    hidden = variant("hidden.pth", **{"mapper.t_mapper.2.weight": torch.zeros(MAPPER_HIDDEN, 32)})
    _assert_cli_error([hidden], tmp_path / "x.safetensors", capsys, "mapper.t_mapper.2.weight has shape (64, 32)")
    no_v = tmp_path / "no_v.pth"
    torch.save({"iter": 1, "arch": TINY_RN,
                "state_dict": {k: v for k, v in fake["state"].items() if "v_mapper" not in k}}, no_v)
    _assert_cli_error([no_v], tmp_path / "x.safetensors", capsys, "no mapper.v_mapper.1.weight")
    assert main([str(no_v), str(tmp_path / "text_only.safetensors"), "--experiment", "metfaces_paper", *SMALL]) == 0
    capsys.readouterr()
    with pytest.raises(UserError, match="is not lgfa-test-tiny-rn-clip: it has no encoder.visual.conv1.weight"):
        torch.save({"state_dict": {k: v for k, v in fake["state"].items() if k != "encoder.visual.conv1.weight"}},
                   tmp_path / "no_conv.pth")
        convert(tmp_path / "no_conv.pth", tmp_path / "y.safetensors", overrides=SMALL)


def test_openai_clip_keeps_its_quickgelu(fake):
    """The authors ran OpenAI's CLIP (QuickGELU); open_clip's plain RN50 config builds exact GELU."""
    assert openai_activation("RN50") == "RN50-quickgelu"
    assert openai_activation("RN50-quickgelu") == "RN50-quickgelu"
    assert openai_activation(TINY_RN) == TINY_RN

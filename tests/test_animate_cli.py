"""animate.py end to end on a tiny exported animator, and its one-line errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import animate
import evaluate
from src.pipeline import FaceAnimator
from src.systems.animator import AnimatorModule
from tests.conftest import ROOT
from tests.test_animator import PAPER_LOSS, groups, tiny_domain, write_tiny_models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny animator exported to safetensors next to its generator and CLIP files (relative names)."""
    tmp = tmp_path_factory.mktemp("assets")
    g_path, clip_cfg = write_tiny_models(tmp)
    domain = tiny_domain(generator={"checkpoint": str(g_path), "truncation_psi": 0.7, "noise_mode": "const"},
                         clip=clip_cfg, loss_clip=dict(clip_cfg))
    torch.manual_seed(0)
    module = AnimatorModule(domain=domain, loss=PAPER_LOSS, **groups(hidden=8, train_frames=3, val_frames=4))
    path = module.export(tmp / "animator.safetensors", relative_to=tmp)
    return dict(tmp=tmp, path=path, module=module)


def test_export_is_relocatable_and_round_trips(exported, tmp_path):
    import shutil

    from safetensors import safe_open

    with safe_open(str(exported["path"]), framework="pt") as f:
        meta = f.metadata()
    assert '"checkpoint": "G.safetensors"' in meta["hyper_parameters"]  # stored relative to the folder
    moved = tmp_path / "moved"
    shutil.copytree(exported["tmp"], moved)
    loaded = FaceAnimator.from_pretrained(moved / "animator.safetensors")
    assert str(moved) in str(loaded.config["domain"]["generator"]["checkpoint"])
    w = exported["module"].sample_latents(1, seed=5)
    a = exported["module"].animate(w, ["The person is smiling."], num_frames=4, seed=1)
    b = loaded.animate(w, ["The person is smiling."], num_frames=4, seed=1)
    torch.testing.assert_close(a["frames"], b["frames"])


def test_animate_writes_video_and_strip(exported, tmp_path, capsys):
    out = tmp_path / "out" / "clip.gif"
    rc = animate.main([f"checkpoint={exported['path']}", "seed=3", "frames=5", f"output={out}",
                       'text=["The person is smiling.","The person is angry."]'])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".png").is_file()
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 9  # two chained segments of 5 frames share one frame
        assert im.size == (16, 16)
    from src.utils.contact_sheet import sheet_metrics

    with Image.open(out.with_suffix(".png")) as strip:  # all 9 frames, labelled, under the prompts
        m = sheet_metrics(16, 16)
        assert strip.size[0] >= 9 * 16 + 10 * m.pad and strip.size[1] > m.pad + m.band + 16 + m.pad
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]  # no temp files left


def test_animate_mp4_and_latent_input(exported, tmp_path, capsys):
    w = exported["module"].sample_latents(1, seed=2)
    lat = tmp_path / "w.npy"
    np.save(lat, w.numpy())
    out = tmp_path / "a.mp4"
    rc = animate.main([f"checkpoint={exported['path']}", f"latent={lat}", "frames=4", f"output={out}", "strip=false"])
    assert rc == 0, capsys.readouterr().err
    assert out.stat().st_size > 0 and not out.with_suffix(".png").exists()
    import imageio.v2 as imageio

    frames = imageio.mimread(out)
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)


@pytest.mark.parametrize("args,needle", [
    (["checkpoint=/nonexistent/animator.safetensors"], "not found"),
    (["output=video.avi"], "unsupported video format"),
    (["frames=1"], "frames"),
    (["fps=0"], "fps"),
    (["decay=quadratic"], "decay"),
    (["seed=1", "latent=x.npy"], "only one of"),
    (["framez=3"], "framez"),
    (["text="], "text"),
    (["seed=-1"], "seed"),
    (["cuda_graphs=maybe"], "cuda_graphs"),
    (["channels_last=maybe"], "channels_last"),
])
def test_bad_arguments_one_line(exported, args, needle, tmp_path, capsys):
    base = [f"checkpoint={exported['path']}", f"output={tmp_path / 'o.mp4'}"]
    rc = animate.main(base + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert needle in err
    assert not list(tmp_path.glob("o*"))  # nothing half-written


def test_bad_files_one_line(exported, tmp_path, capsys):
    bad_img = tmp_path / "face.png"
    bad_img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    bad_lat = tmp_path / "w.npy"
    np.save(bad_lat, np.zeros((3, 7), dtype=np.float32))
    bad_ckpt = tmp_path / "animator.safetensors"
    bad_ckpt.write_bytes(b"not a checkpoint at all")
    long_prompt = "The person is " + "very " * 200 + "happy."
    for args in ([f"image={bad_img}"], [f"latent={bad_lat}"], [f"text={long_prompt}"]):
        rc = animate.main([f"checkpoint={exported['path']}", f"output={tmp_path / 'o.mp4'}", *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1, (args, err)
    rc = animate.main([f"checkpoint={bad_ckpt}", f"output={tmp_path / 'o.mp4'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and str(bad_ckpt) in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("o*"))


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "animate.py"), f"checkpoint={tmp_path / 'missing.safetensors'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_evaluate_cli_prints_json_with_oracle_scores(exported, tmp_path, capsys):
    import json

    from src.embedded.oracle import AttributeOracle, save_oracle

    oracle_path = save_oracle(AttributeOracle(resolution=16, width=4, hidden=8), tmp_path / "oracle")
    out = tmp_path / "res.json"
    rc = evaluate.main([f"checkpoint={exported['path']}", "faces=3", "frames=4", "batch=2",
                        f"oracle={oracle_path}", "concepts=[smiling,winking]", f"output={out}"])
    printed = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out.read_text())
    # a short table on the terminal (one row per concept, an overall row), the full JSON in the file
    rows = printed.strip().splitlines()
    assert rows[0].split()[:3] == ["concept", "top-1", "CLIP"] and "right way" in rows[0]
    assert [r.split()[0] for r in rows if r[:1].isalpha()][1:] == ["smiling", "winking", "overall", "wrote"]
    assert len(printed) < 2000
    s = result["summary"]
    for key in ("text_top1", "clip_score", "frame0_psnr", "pixel_jerk", "oracle_reach", "oracle_right_way",
                "oracle_identity_drift"):
        assert key in s, key
    assert s["frame0_psnr"] >= 99.0  # frame 0 is the input face exactly
    assert 0.0 <= s["text_top1"] <= 1.0 and set(result["per_concept"]) == {"smiling", "winking"}
    # drift per identity attribute: every identity attribute, averaging to the scalar drift
    from src.embedded import PARAM_SPACE

    by_attr = s["oracle_identity_drift_by_attribute"]
    assert list(by_attr) == PARAM_SPACE.identity_names and all(v >= 0 for v in by_attr.values())
    assert evaluate.main(["checkpoint=/nonexistent.safetensors"]) == 2


def test_evaluate_cli_face_seed_offset_picks_other_faces(exported, capsys, tmp_path):
    import json

    def run(*extra):
        out = tmp_path / "r.json"
        assert evaluate.main([f"checkpoint={exported['path']}", "faces=2", "frames=3", "concepts=[smiling]",
                              f"output={out}", *extra]) == 0
        capsys.readouterr()
        return json.loads(out.read_text())

    default, same, other = run(), run("face_seed_offset=10000"), run("face_seed_offset=20000")
    assert default["settings"]["face_seed_offset"] == 10000 and other["settings"]["face_seed_offset"] == 20000
    assert same["summary"] == default["summary"]
    assert other["summary"]["clip_score"] != default["summary"]["clip_score"]
    assert evaluate.main([f"checkpoint={exported['path']}", "face_seed_offset=-1"]) == 2
    assert capsys.readouterr().err.startswith("error: face_seed_offset")


def test_evaluate_with_projection_computes_each_face_batch_jacobian_once(exported, tmp_path, monkeypatch):
    from src.embedded import PARAM_SPACE
    from src.embedded.oracle import AttributeOracle, save_oracle
    from src.eval import runner

    names = PARAM_SPACE.identity_names
    torch.manual_seed(0)
    reader = save_oracle(AttributeOracle(resolution=16, width=2, hidden=4, num_params=len(names)).eval(),
                         tmp_path / "reader", names)
    module = FaceAnimator.from_pretrained(exported["path"], overrides={"inference.projection_reader": str(reader)})
    w = module.sample_latents(2, seed=4)
    # a precomputed Jacobian gives exactly the animation that computes its own
    own = module.animate(w, ["The person is smiling."], num_frames=4, identity_projection=0.5)
    given = module.animate(w, ["The person is smiling."], num_frames=4, identity_projection=0.5,
                           identity_jacobian=module.identity_jacobian(w))
    assert torch.equal(own["ws"], given["ws"]) and not torch.equal(own["ws"][:, -1], w)
    with pytest.raises(Exception, match="2 animations"):
        module.animate(w, ["The person is smiling."], num_frames=4, identity_projection=0.5,
                       identity_jacobian=module.identity_jacobian(w[:1]))
    calls = []
    real = module.identity_jacobian
    monkeypatch.setattr(module, "identity_jacobian", lambda faces: calls.append(len(faces)) or real(faces))
    result = runner.evaluate(module, n_faces=3, frames=4, batch=2, concepts=["smiling", "winking", "angry"],
                               progress=False, identity_projection=0.5)
    assert calls == [2, 1]  # two face batches, each once for all three prompts
    assert result["settings"]["identity_projection"] == 0.5


def test_animate_path_imports_no_lightning(tmp_path):
    """Inference is apart from training: animate.py on the embedded default never imports Lightning
    (nor the training systems)."""
    code = ("import sys, animate; "
            f"rc = animate.main(['frames=3', 'identity_projection=0', 'output={tmp_path / 'a.gif'}']); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') "
            "or m.startswith('src.systems')); "
            "print(rc, bad); sys.exit(rc or bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_text_is_the_sentence_as_typed_and_then_chains_motions(exported, tmp_path, capsys):
    """Commas and apostrophes need no Hydra quoting; 'then' plays two motions one after the other."""
    out = tmp_path / "s.gif"
    rc = animate.main([f"checkpoint={exported['path']}", "text=The person's smiling, then angry", "frames=3",
                       f"output={out}", "strip=false"])
    assert rc == 0, capsys.readouterr().err
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 5  # two motions of 3 frames sharing one
    rc = animate.main([f"checkpoint={exported['path']}", 'text=["The person is smiling.", "The person is angry."]',
                       "frames=3", f"output={out}", "strip=false"])
    assert rc == 0
    with Image.open(out) as im:
        assert im.n_frames == 5
    assert animate.main([f"checkpoint={exported['path']}", "text= ", f"output={out}"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: text")


def test_prompt_segments_phrase_later_motions_like_the_domain():
    from src.pipeline.text import prompt_segments

    t = "The person is {}."
    assert prompt_segments("The person is smiling, then winking", t) == ["The person is smiling",
                                                                        "The person is winking."]
    assert prompt_segments("winking and then opening mouth", t) == ["The person is winking.",
                                                                    "The person is opening mouth."]
    assert prompt_segments("The person's smiling", t) == ["The person's smiling"]  # one motion: as typed
    assert prompt_segments("The person is smiling; then she winks", t) == ["The person is smiling", "she winks"]
    assert prompt_segments(["a", "b"], t) == ["a", "b"]
    with pytest.raises(Exception, match="non-empty"):
        prompt_segments(" then ", t)


def test_help_shows_every_key_and_list_prompts_the_trained_concepts(exported, capsys):
    assert animate.main(["--help"]) == 0
    shown = capsys.readouterr().out
    for key in ("text=", "frames=16", "seed=null", "strength=1.0", "decay=linear", "output=animation.mp4",
                "list_prompts=false", "identity_projection=null", "cuda_graphs=false", "channels_last=true"):
        assert key in shown, key
    assert "frames per motion" in shown and "GPU only" in shown  # the meaning, not only the default
    assert animate.main([f"checkpoint={exported['path']}", "list_prompts=true"]) == 0
    listed = capsys.readouterr().out
    assert "The person is smiling." in listed and "The person is angry." in listed


@pytest.mark.parametrize("device,args,graphs", [("cuda", ["cuda_graphs=true"], True), ("cuda", [], False),
                                                 ("cpu", ["cuda_graphs=true"], False)])
def test_cuda_graphs_reach_the_pipeline_on_a_gpu_only(exported, tmp_path, monkeypatch, device, args, graphs):
    """cuda_graphs=true asks from_pretrained for CUDA graphs when the device is CUDA (parse_device stands
    in for a GPU here); on a CPU it has no effect."""
    from src.config import cli
    from src.config.compose import compose_config
    from src.utils.errors import UserError

    assert compose_config("animate", args).cuda_graphs is bool(args)
    seen = {}

    def spy(path, device=None, cuda_graphs=None, channels_last=None, **kwargs):
        seen.update(device=device, cuda_graphs=cuda_graphs, channels_last=channels_last)
        raise UserError("stopped after from_pretrained")

    monkeypatch.setattr(cli, "parse_device", torch.device)
    monkeypatch.setattr(FaceAnimator, "from_pretrained", spy)
    rc = animate.main([f"checkpoint={exported['path']}", f"device={device}", f"output={tmp_path / 'o.gif'}", *args])
    assert rc == 2 and seen == {"device": torch.device(device), "cuda_graphs": graphs, "channels_last": True}
    rc = animate.main([f"checkpoint={exported['path']}", f"device={device}", f"output={tmp_path / 'o.gif'}",
                       "channels_last=false"])
    assert rc == 2 and seen["channels_last"] is False  # the default (True) applies to CUDA tensors only


def test_a_latent_far_from_the_generator_gets_one_warning_line(exported, tmp_path, capsys):
    w_dim = exported["module"].generator.w_dim
    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).standard_normal((1, w_dim)).astype(np.float32) * 3)
    rc = animate.main([f"checkpoint={exported['path']}", f"latent={noise}", "frames=3",
                       f"output={tmp_path / 'n.gif'}", "strip=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and len([e for e in err if e.startswith("warning:")]) == 1, err
    assert "far from this generator" in err[0]
    own = tmp_path / "own.npy"
    np.save(own, exported["module"].sample_latents(1, seed=9).numpy())
    rc = animate.main([f"checkpoint={exported['path']}", f"latent={own}", "frames=3",
                       f"output={tmp_path / 'o.gif'}", "strip=false"])
    assert rc == 0 and "warning" not in capsys.readouterr().err


def test_out_of_memory_is_one_line(exported, tmp_path, capsys, monkeypatch):
    from src.pipeline import FaceAnimator

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(FaceAnimator, "animate", oom)
    rc = animate.main([f"checkpoint={exported['path']}", f"output={tmp_path / 'o.gif'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: out of GPU memory") and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_a_photo_far_from_the_generator_gets_one_warning_line(exported, tmp_path, capsys):
    """What the embedded generator cannot draw projects poorly: the user is told, once, and why."""
    from src.pipeline import FaceAnimator

    pipe = FaceAnimator.from_pretrained(exported["path"])
    pipe.check_projection(35.0, "render.png")
    assert capsys.readouterr().err == ""
    from src.utils.log import show_warnings

    show_warnings()
    pipe.check_projection(20.5, "photo.png")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: photo.png projects poorly"), err
    pipe.domain = {**pipe.domain, "name": "synthetic"}
    pipe.check_projection(20.5, "photo.png")
    assert "knows only its cartoon faces" in capsys.readouterr().err


def test_save_latent_keeps_the_face_for_latent(exported, tmp_path, capsys):
    """save_latent= writes the input face's W+; animating it again with latent= gives the same video."""
    lat = tmp_path / "face.npy"
    a, b = tmp_path / "a.gif", tmp_path / "b.gif"
    base = [f"checkpoint={exported['path']}", "frames=3", "strip=false"]
    assert animate.main(base + ["seed=4", f"save_latent={lat}", f"output={a}"]) == 0
    assert np.load(lat).shape == (1, exported["module"].generator.num_ws, exported["module"].generator.w_dim)
    assert animate.main(base + [f"latent={lat}", f"output={b}"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert "warning" not in capsys.readouterr().err
    assert animate.main(base + [f"save_latent={tmp_path / 'x.txt'}", f"output={a}"]) == 2
    assert capsys.readouterr().err.startswith("error: save_latent=")

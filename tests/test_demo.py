"""The web demo without a browser: the render function on the embedded default (video, strip,
readings), a readable one-line message for every bad input, the config and the command line."""
from __future__ import annotations

import ast
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from src.demo.inputs import MAX_PROMPT_CHARS, Request
from src.demo.render import Renderer, load_demo_oracle
from src.utils.errors import UserError
from tests.conftest import ROOT

CHECKPOINT = ROOT / "assets" / "animator_synthetic.safetensors"


@pytest.fixture(scope="module")
def renderer():
    from src.pipeline import FaceAnimator

    pipeline = FaceAnimator.from_pretrained(CHECKPOINT, device="cpu")
    r = Renderer(pipeline, load_demo_oracle(pipeline, "auto", ROOT / "assets", "cpu"))
    yield r
    r.close()


def test_render_gives_video_strip_and_readings(renderer):
    result = renderer.render(Request(prompt="The person is winking.", seed=3, frames=4))
    assert result.video.suffix == ".mp4" and result.video.stat().st_size > 0
    with Image.open(result.strip) as strip:
        assert strip.format == "PNG" and strip.width >= 4 * 128 and strip.height >= 128
    assert result.frames == 4 and result.prompts == ["The person is winking."]
    assert result.clip["frame"] == [0, 1, 2, 3] and set(result.clip["series"]) == {"winking"}
    assert all(-1 <= v <= 1 for v in result.clip["value"])
    assert result.oracle["series"] == ["winking"] * 4 and result.oracle["value"][0] == 0
    assert result.oracle["value"][-1] > 0.1  # the embedded animator winks
    assert "4 frames of The person is winking." in result.message


def test_sequence_plays_each_motion_and_reads_each_concept(renderer):
    progress = []
    result = renderer.render(Request(prompt="The person is smiling.", sequence="then winking", seed=3, frames=3),
                             progress=lambda f, desc="": progress.append((f, desc)))
    assert result.prompts == ["The person is smiling.", "The person is winking."]
    assert result.frames == 5  # 3 + 3, the second motion starting from the first one's last frame
    assert sorted(set(result.oracle["series"])) == ["smiling", "winking"]
    assert len(result.clip["frame"]) == 2 * 5
    assert [f for f, _ in progress] == sorted(f for f, _ in progress) and progress[-1][0] == 1.0


def test_free_sentence_has_clip_reading_and_a_note(renderer):
    result = renderer.render(Request(prompt="a face lit up with joy", seed=1, frames=2))
    assert set(result.clip["series"]) == {"a face lit up with joy"}  # not the template's: as typed
    assert result.oracle["frame"] == [] and any("oracle reads" in n for n in result.notes)


def test_legend_names_are_short():
    from src.demo.readings import short_label

    assert short_label("The person is winking.", "The person is {}.") == "winking"
    assert short_label("The person is.", "The person is {}.") == "The person is."
    assert short_label("a face lit up with joy and more words", "The person is {}.") == "a face lit up with joy and…"


def test_latent_upload_is_the_seed_face(renderer, tmp_path):
    w = renderer.pipeline.face_latent(None, seed=5).cpu().numpy()
    np.save(tmp_path / "face.npy", w)
    from_latent = renderer.preview(Request(source="latent", latent=str(tmp_path / "face.npy")))
    assert from_latent.shape == (128, 128, 3) and from_latent.dtype == np.uint8
    assert np.array_equal(from_latent, renderer.preview(Request(source="seed", seed=5)))


def test_image_upload_is_projected(renderer, tmp_path):
    face = renderer.preview(Request(seed=2))
    Image.fromarray(face).save(tmp_path / "face.png")
    assert np.array_equal(renderer.preview(Request(source="image", image=str(tmp_path / "face.png"))), face)
    Image.fromarray(face).resize((300, 200)).save(tmp_path / "wide.png")  # shown as the projection sees it
    assert renderer.preview(Request(source="image", image=str(tmp_path / "wide.png"))).shape == (128, 128, 3)
    ws = renderer.face(Request(source="image", image=str(tmp_path / "face.png"), projection_steps=5))
    assert ws.shape == (1, renderer.pipeline.generator.num_ws, renderer.pipeline.generator.w_dim)


def _files(tmp_path) -> dict:
    (tmp_path / "notes.txt").write_text("not a face")
    (tmp_path / "fake.png").write_text("not a PNG either")
    Image.new("L", (5000, 5000)).save(tmp_path / "huge.png")  # small file, 25 megapixels
    np.save(tmp_path / "wide.npy", np.zeros((1, 512), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((1, 256), np.int64))
    Image.new("RGB", (64, 64), "white").save(tmp_path / "small.png")
    return {name: str(tmp_path / name) for name in ("notes.txt", "fake.png", "huge.png", "wide.npy", "ints.npy",
                                                     "small.png")}


BAD = [  # (request fields, the message's words)
    (dict(prompt=""), "Type a prompt"),
    (dict(prompt="   \n "), "Type a prompt"),
    (dict(prompt="The person is smiling. " * 50), f"characters long; at most {MAX_PROMPT_CHARS} go"),
    (dict(prompt="x " * 400), "prompt too long"),  # under the characters' cap, over the text encoder's context
    (dict(prompt="The person is smiling.", sequence="x " * 500), f"characters long; at most {MAX_PROMPT_CHARS} go"),
    (dict(source="image", image="notes.txt"), "notes.txt is not an image: upload one of .jpg"),
    (dict(source="image", image="fake.png"), "fake.png: not an image file"),
    (dict(source="image", image="huge.png"), "huge.png: image too large (5000x5000"),
    (dict(source="image"), "Upload a face image first"),
    (dict(source="image", image="small.png", projection_steps=1000), "Projection steps must be a whole number in 5..300"),
    (dict(source="latent", latent="notes.txt"), "notes.txt is not a latent file: upload one of .npy"),
    (dict(source="latent", latent="wide.npy"), "wide.npy: latent shape [1, 512] does not fit the generator"),
    (dict(source="latent", latent="ints.npy"), "latent must be floating point"),
    (dict(source="webcam"), "The face comes from a seed, an image or a latent"),
    (dict(seed=None), "Choose a seed"),
    (dict(seed=-1), "The seed must be a whole number in 0..4294967295"),
    (dict(seed=1.5), "The seed must be a whole number"),
    (dict(frames=1), "Frames must be a whole number in 2..48"),
    (dict(frames=10_000), "Frames must be a whole number in 2..48"),
    (dict(strength=0), "Strength must be in (0, 10]"),
    (dict(strength="strong"), "Strength must be a number"),
    (dict(decay="sudden"), "Decay must be one of none, linear"),
    (dict(fps=0), "fps must be between 0.01 and 1000"),
    (dict(fps=float("nan")), "fps must be a finite number"),
]


@pytest.mark.parametrize("fields, words", BAD, ids=[w[:40] for _, w in BAD])
def test_bad_input_gives_its_message(renderer, tmp_path, fields, words):
    files = _files(tmp_path)
    fields = {k: files.get(v, v) if isinstance(v, str) and k in ("image", "latent") else v for k, v in fields.items()}
    with pytest.raises(UserError) as e:
        renderer.render(Request(**fields))
    message = str(e.value)
    assert words in message and "\n" not in message and str(tmp_path) not in message


def test_upload_over_the_limit_is_refused(renderer, tmp_path):
    small = Renderer(renderer.pipeline, max_upload_bytes=1000)
    try:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "f.png")
        with pytest.raises(UserError, match=r"f.png is 0.0 MB; uploads are limited to"):
            small.render(Request(source="image", image=str(tmp_path / "f.png")))
    finally:
        small.close()


def test_page_messages_never_show_a_traceback():
    from src.demo.app import guarded

    def fails(kind):
        raise {"user": UserError("A readable *line*"), "bug": KeyError("x"), "memory": MemoryError()}[kind]

    run = guarded(fails, (None, None))
    progress = object()

    def takes_progress(prompt, progress=progress):
        return (prompt,)

    import inspect
    assert inspect.signature(guarded(takes_progress, ())).parameters["progress"].default is progress  # Gradio's cue
    assert run("user") == (None, None, '<span class="error">A readable \\*line\\*</span>')
    assert "Something went wrong (KeyError: 'x')" in run("bug")[-1]
    assert "Out of memory" in run("memory")[-1]


def test_page_builds_queued_without_serving(renderer):
    pytest.importorskip("gradio", reason="the page needs gradio: pip install -r requirements-demo.txt")
    from src.config.compose import compose_config
    from src.demo.server import queued_page
    from src.demo.settings import check_settings

    page = queued_page(renderer, check_settings(compose_config("demo", ["demo.queue_size=3"]).demo))
    assert page._queue.max_size == 3
    assert {fn.concurrency_id for fn in page.fns.values() if fn.queue} == {"pipeline"}
    assert page._queue.default_concurrency_limit == 1  # one request renders at a time, the others wait
    ids = {getattr(b, "elem_id", None) for b in page.blocks.values()}
    assert {"prompt", "sequence", "source", "seed", "image-upload", "latent-upload", "frames", "strength", "decay",
            "fps", "run", "status", "video", "strip", "clip-plot", "oracle-plot", "face", "steps", "concepts"} <= ids


def test_config_composes_and_checks_its_values():
    from src.config.compose import compose_config
    from src.demo.settings import check_keys, check_settings

    cfg = compose_config("demo", ["demo.port=8123", "demo.max_upload_mb=2"])
    assert set(cfg.demo) == {"checkpoint", "host", "port", "device", "queue_size", "max_upload_mb"}
    settings = check_settings(cfg.demo)
    assert (settings.host, settings.port, settings.device, settings.max_upload_bytes) == ("127.0.0.1", 8123, "cpu",
                                                                                       2 * 2**20)
    assert settings.checkpoint == str(CHECKPOINT)
    for bad, words in ((["demo.port=70000"], "demo.port must be in 1..65535"),
                       (["demo.queue_size=0"], "demo.queue_size must be >= 1"),
                       (["demo.max_upload_mb=0"], "demo.max_upload_mb must be in"),
                       (["demo.device=tpu"], "device=tpu: not a device here")):
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace(".", r"\.")):
            check_settings(compose_config("demo", bad).demo)
    with pytest.raises(UserError, match=r"unknown key 'demo\.prot' \(did you mean demo\.port\?"):
        check_keys(["demo.prot=1"])


def test_command_line(capsys):
    import demo

    assert demo.main(["demo.port=0"]) == 2
    assert capsys.readouterr().err == "error: demo.port must be in 1..65535, got 0\n"
    assert demo.main(["port=8000"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown key 'port' (did you mean demo.port?")
    assert demo.main(["demo.port=abc"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.MonkeyPatch.context() as mp:  # without the extra: one line saying how to install it
        mp.setitem(sys.modules, "gradio", None)
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        assert demo.main([]) == 2
    assert capsys.readouterr().err == "error: the demo needs gradio: pip install -r requirements-demo.txt\n"
    out = subprocess.run([sys.executable, "demo.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "demo.port=7860" in out.stdout and "demo.host=127.0.0.1" in out.stdout


def test_demo_uses_the_pipeline_not_lightning():
    for path in sorted((ROOT / "src" / "demo").glob("*.py")) + [ROOT / "demo.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning")
                        or n.startswith("src.systems")], path
    assert "FaceAnimator.from_pretrained" in (ROOT / "src" / "demo" / "render.py").read_text()

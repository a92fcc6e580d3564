"""Faces near the average (the authors' diverse samples): FaceInputs.sample_near_average, animate.py
diverse=N (one grid video and a contact sheet) and evaluate.py face_sampling=near_average, with the
paper's columns (temporal MS-SSIM, shape ACD, face ACD and its network) in the evaluation."""
from __future__ import annotations

import json

import pytest
import torch

import animate
import evaluate
from src.pipeline import FaceAnimator
from tests.test_animate_cli import exported  # noqa: F401  (the tiny exported animator, a fixture)

TEXT = "The person is smiling."


@pytest.fixture()
def animator(exported):  # noqa: F811
    return FaceAnimator.from_pretrained(exported["path"])


def test_near_average_faces_are_the_mapped_noise_around_w_avg(animator):
    G = animator.generator
    G.mapping.w_avg.copy_(torch.linspace(-1, 1, G.w_dim))
    ws = animator.sample_near_average(3, seed=5)
    assert ws.shape == (3, G.num_ws, G.w_dim)
    assert torch.equal(ws, ws[:, :1].expand_as(ws))  # one w on every W+ layer
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(5)) / 10 + G.mapping.w_avg
    torch.testing.assert_close(ws, G.mapping(z, torch.zeros(3, 0), truncation_psi=1.0))
    assert torch.equal(animator.sample_near_average(3, seed=5), ws)
    assert not torch.equal(animator.sample_near_average(3, seed=6), ws)
    # scale 0: every face is the average face
    still = animator.sample_near_average(2, seed=5, scale=0.0)
    assert torch.equal(still[0], still[1])


def test_diverse_writes_a_grid_video_and_a_contact_sheet(exported, animator, tmp_path, capsys,  # noqa: F811
                                                          monkeypatch):
    import src.utils.video as video

    written = []
    real = video.write_video
    monkeypatch.setattr(video, "write_video",
                        lambda frames, path, **kw: written.append(frames) or real(frames, path, **kw))
    out = tmp_path / "grid.gif"
    rc = animate.main([f"checkpoint={exported['path']}", "diverse=3", "frames=3", f"output={out}", f"text={TEXT}"])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".png").is_file()
    grid = written[0]
    assert grid.shape == (3, 3, 32, 32)  # 3 faces of 16 px: 2 x 2 cells, row by row
    faces = animator.sample_near_average(3)
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0)]):
        want = animator(faces[i:i + 1], TEXT, frames=3, check_latent=False)
        torch.testing.assert_close(grid[:, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16], want)
    assert grid[:, :, 16:, 16:].eq(1).all()  # the empty cell is white
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 3 and im.size == (32, 32)
    with Image.open(out.with_suffix(".png")) as sheet:  # three rows of three frames, labelled
        assert sheet.size[0] > 3 * 16 and sheet.size[1] > 3 * 16


def test_diverse_of_two_faces_is_one_row(exported, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "two.gif"
    assert animate.main([f"checkpoint={exported['path']}", "diverse=2", "frames=3", f"output={out}",
                         "strip=false"]) == 0, capsys.readouterr().err
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (32, 16)
    assert not out.with_suffix(".png").exists()


@pytest.mark.parametrize("args,needle", [
    (["diverse=0"], "diverse must be"), (["diverse=-3"], "diverse must be"), (["diverse=abc"], "diverse"),
    (["diverse=2", "seed=3"], "seed="), (["diverse=2", "image=face.png"], "image="),
    (["diverse=2", "latent=w.npy"], "latent="), (["diverse=2", "save_latent=w.npy"], "save_latent="),
])
def test_bad_diverse_is_one_line_and_writes_nothing(exported, tmp_path, capsys, args, needle):  # noqa: F811
    rc = animate.main([f"checkpoint={exported['path']}", f"output={tmp_path / 'o.mp4'}", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and needle in err, err
    assert not list(tmp_path.iterdir())


def _evaluate(exported, tmp_path, capsys, *extra):  # noqa: F811
    out = tmp_path / "r.json"
    rc = evaluate.main([f"checkpoint={exported['path']}", "faces=2", "frames=3", "concepts=[smiling]",
                        f"output={out}", *extra])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    return json.loads(out.read_text()), printed.out


def test_evaluate_reports_the_paper_columns_and_says_why_face_acd_is_missing(exported, tmp_path, capsys):  # noqa: F811
    result, printed = _evaluate(exported, tmp_path, capsys)
    s = result["summary"]
    assert 0.0 < s["ms_ssim"] <= 1.0 and s["shape_acd"] >= 0.0 and "face_acd" not in s
    assert result["settings"]["face_acd_network"].startswith("n/a (no face recogniser:")
    assert "MS-SSIM" in printed.splitlines()[0] and "face ACD: n/a (no face recogniser:" in printed


def test_evaluate_face_acd_with_a_given_recogniser(exported, tmp_path, capsys):  # noqa: F811
    from src.embedded.face_id import SyntheticFaceID, save_face_id

    torch.manual_seed(0)
    path = save_face_id(SyntheticFaceID(resolution=16, width=2, hidden=4, embed_dim=4), tmp_path / "face_id")
    result, printed = _evaluate(exported, tmp_path, capsys, f"face_net={path}")
    assert result["summary"]["face_acd"] >= 0.0 and str(path) in result["settings"]["face_acd_network"]
    assert f"face ACD: embedded face recogniser ({path})" in printed
    assert evaluate.main([f"checkpoint={exported['path']}", f"face_net={tmp_path / 'missing.pth'}"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: face_net=")


def test_evaluate_on_faces_near_the_average(exported, tmp_path, capsys):  # noqa: F811
    seeds, _ = _evaluate(exported, tmp_path, capsys)
    near, _ = _evaluate(exported, tmp_path, capsys, "face_sampling=near_average")
    again, _ = _evaluate(exported, tmp_path, capsys, "face_sampling=near_average")
    assert near["settings"]["face_sampling"] == "near_average" and seeds["settings"]["face_sampling"] == "seeds"
    assert near["summary"] == again["summary"] and near["summary"]["clip_score"] != seeds["summary"]["clip_score"]
    assert evaluate.main([f"checkpoint={exported['path']}", "face_sampling=average"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: face_sampling 'average'")


def test_evaluate_without_the_paper_metrics(exported, tmp_path, capsys):  # noqa: F811
    result, printed = _evaluate(exported, tmp_path, capsys, "paper_metrics=false")
    s = result["summary"]
    assert not {"ms_ssim", "shape_acd", "face_acd"} & set(s) and "clip_score" in s
    assert result["settings"]["paper_metrics"] is False and "MS-SSIM" not in printed.splitlines()[0]

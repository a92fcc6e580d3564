"""Every command the README marks runnable works as written.

A README code block whose info string says ``runnable`` (```` ```bash runnable ````) is run here,
each command line in a fresh working folder that holds the repository's files (symbolic links) and
the example inputs the README names (``w_plus.npy``, ``my_render.png``). The install part of the
quick start (venv, pip) is what CI itself has just done, so it is left out. Blocks marked
``runnable long`` (minutes on a CPU, a GPU, or a trained run) are deselected by default: run them
with ``python -m pytest -m long tests/test_readme.py`` on a machine that has what they need.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && "
ENTRIES = ("animate.py", "evaluate.py", "train.py", "src", "conf", "assets", "checkpoints", "requirements.txt")


def readme_commands() -> list:
    """pytest params (language, command) of the runnable blocks, long ones marked."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    params = []
    for lang, info, body in re.findall(r"```(\w+)([^\n]*)\n(.*?)```", text, re.S):
        flags = info.split()
        if "runnable" not in flags:
            continue
        marks = [pytest.mark.long] if "long" in flags else [pytest.mark.slow]
        if lang == "python":
            params.append(pytest.param(lang, body, marks=marks, id=f"python:{body.splitlines()[-1][:50]}"))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                command = line.replace(INSTALL, "")
                params.append(pytest.param(lang, command, marks=marks, id=command[:70]))
    return params


@pytest.fixture()
def workdir(tmp_path):
    """A folder that looks like a checkout (links to the repository's files) plus the README's inputs."""
    for name in ENTRIES:
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def make_inputs(command: str, where: Path) -> None:
    """The example files a README command names: a latent and a render of the embedded generator, a
    file of phrasings."""
    if "my_phrasings.json" in command:
        import json

        from src.embedded import vocabulary

        concepts = vocabulary.CONCEPT_NAMES
        (where / "my_phrasings.json").write_text(json.dumps({c: vocabulary.get(c).heldout[:1] for c in concepts}))
    if "w_plus.npy" not in command and "my_render.png" not in command:
        return
    import numpy as np
    import torch

    from src.stylegan import load_generator, seeded_ws
    from src.utils.video import to_uint8_frames

    G = load_generator(ROOT / "assets" / "stylegan2_synthetic128.safetensors")
    with torch.no_grad():
        ws = seeded_ws(G, [7], 0.8)
        np.save(where / "w_plus.npy", ws.numpy())
        from PIL import Image

        Image.fromarray(to_uint8_frames(G.synthesis(ws, noise_mode="const"))[0]).save(where / "my_render.png")


@pytest.mark.parametrize("lang,command", readme_commands())
def test_readme_command_runs_as_written(lang, command, workdir):
    make_inputs(command, workdir)
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    if lang == "python":
        args = [sys.executable, "-c", command]
    else:
        python = re.sub(r"\bpython3? ", f"{sys.executable} ", command)
        args = ["bash", "-c", python]
    proc = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_the_readme_marks_the_quick_start_runnable():
    ids = [p.id for p in readme_commands()]
    assert any(i.startswith("python animate.py") for i in ids) and len(ids) >= 6

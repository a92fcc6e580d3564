"""animate.py and every writer as a hostile user meets them: each bad input or failed write ends in one
line `error: ...` and exit code 2 (or simply works), and no write ever leaves a broken file or a
temporary one; the old file stays as it was."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import animate
from src.utils import io as uio
from src.utils import video as uvideo
from src.utils.errors import UserError
from tests.conftest import ROOT
from tests.test_animate_cli import exported  # noqa: F401  (the tiny exported animator, a fixture)

# `python animate.py ARGS` after ``setup``; by default its FaceAnimator is a stand-in that draws 2 random
# frames of 16 px at once: what these tests try is the process (exit codes, signals, limits, mounts)
CLI = "import sys\n{setup}\nimport animate\nsys.exit(animate.main(sys.argv[1:]))"
FAKE_ANIMATOR = """
    import torch, src.pipeline
    class FakeAnimator:
        from_pretrained = classmethod(lambda cls, *args, **kwargs: cls())
        face_latent = lambda self, *args, **kwargs: None
        __call__ = lambda self, *args, **kwargs: torch.rand(2, 3, 16, 16, generator=torch.Generator()) * 2 - 1
    src.pipeline.FaceAnimator = FakeAnimator
"""
OLD = b"the old file, which must survive"


def one_line_error(rc: int, err: str, needle: str = "", code: int = 2) -> None:
    err = err.strip()
    assert rc == code and err.startswith("error:") and len(err.splitlines()) == 1, (rc, err)
    assert "Traceback" not in err and needle in err, err


def run_main(args, capsys) -> tuple[int, str]:
    return animate.main(list(args)), capsys.readouterr().err


def cli(exported, args, setup: str = "", timeout: int = 120, preexec_fn=None, prefix=(),
        fake: bool = True) -> subprocess.CompletedProcess:
    """animate.py in its own process (exit codes, signals, limits, mounts are the process's) after
    ``setup``; its FaceAnimator the stand-in unless not ``fake``."""
    code = CLI.format(setup=(textwrap.dedent(FAKE_ANIMATOR) if fake else "") + textwrap.dedent(setup))
    return subprocess.run([*prefix, sys.executable, "-c", code, f"checkpoint={exported['path']}", "frames=2", *args],
                          capture_output=True, text=True, errors="replace", cwd=ROOT, timeout=timeout,
                          preexec_fn=preexec_fn)


def leftovers(folder: Path) -> list[str]:  # temporary files
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def old_pair(folder: Path) -> tuple[Path, Path]:
    """An old video and strip in ``folder`` that a failed write must leave as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in (folder / "a.mp4", folder / "a.png"):
        path.write_bytes(OLD)
    return folder / "a.mp4", folder / "a.png"


def assert_old_intact(*paths: Path) -> None:
    for p in paths:
        assert p.read_bytes() == OLD, p
    assert not leftovers(paths[0].parent), leftovers(paths[0].parent)


# ----------------------------------------------------------------------------- values and keys
@pytest.mark.parametrize("args,needle", [  # args: space-separated; {tmp}: the test's folder
    ("device=foo", "device=foo"), ("device=meta", "device=meta"), ("fps=inf", "fps"), ("fps=nan", "fps"),
    ("fps=0.001 output={tmp}/o.gif", "fps"), ("fps=1e-9", "fps"), ("text=null", "text=null"),
    ("text={a:1}", "text={a:1}"), ("text=[1,2]", "JSON list of strings"), ("text=[]", "text"), ("~text", "~text"),
    ("+foo=1", "unknown key 'foo'"), ("++foo=1", "unknown key 'foo'"), ("+paths.x=1", "paths has no key 'x'"),
    ("output={tmp}", "is a folder"), ("output={tmp}/file.mp4/o.mp4", "not a folder"),
    ("save_latent={tmp}/w.txt", ".npy"),
])
def test_bad_values_end_in_one_line_before_any_work(exported, tmp_path, capsys, args, needle):
    (tmp_path / "file.mp4").write_bytes(OLD)
    args = args.replace("{tmp}", str(tmp_path)).split()
    base = [f"checkpoint={exported['path']}", "frames=2", f"output={tmp_path / 'o.mp4'}"]
    one_line_error(*run_main(base + args, capsys), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.mp4"]  # nothing written
    with pytest.raises(UserError, match="is a folder"):  # the writer itself, too
        uvideo.write_video(torch.zeros(2, 3, 8, 8), tmp_path)


def test_unknown_key_refused_in_the_real_command_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "animate.py"), "+foo=1"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "unknown key 'foo'")


# ----------------------------------------------------------------------------- inputs
def test_non_regular_inputs_are_refused_before_opening(exported, tmp_path):
    """A FIFO as image / latent / checkpoint / projection reader used to block forever; a device or a
    folder reads garbage or fails deep inside. Every case in one process (the real FaceAnimator), under
    one timeout."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for name in ("face.png", "w.npy", "ckpt.safetensors", "reader.safetensors"):
        (tmp_path / name).symlink_to(fifo)
    shutil.copy(Path(exported["tmp"]) / "G.json", tmp_path / "reader.json")
    out, ckpt = f"output={tmp_path / 'o.mp4'}", f"checkpoint={exported['path']}"
    cases = [([ckpt, out, f"image={tmp_path / 'face.png'}"], "image="),
             ([ckpt, out, f"latent={tmp_path / 'w.npy'}"], "latent="),
             ([ckpt, out, f"image={tmp_path}"], "is a folder"),
             ([ckpt, out, "image=/dev/zero"], "is a device"),
             ([out, f"checkpoint={tmp_path / 'ckpt.safetensors'}"], "not a regular file"),
             ([out, "checkpoint=/dev/zero"], "not a regular file"),
             ([f"checkpoint={tmp_path / 'ckpt.safetensors'}", "list_prompts=true"], "not a regular file")]
    setup = f"""
        import contextlib, io, json
        import animate
        from src.identity.reader import load_identity_reader
        from src.utils.errors import UserError
        for args in {[args for args, _ in cases]!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = animate.main(args + ["frames=2"])
            print(json.dumps([rc, err.getvalue()]), flush=True)
        try:
            load_identity_reader({str(tmp_path / 'reader')!r})
        except UserError as e:
            print(json.dumps([2, f"error: {{e}}"]), flush=True)
        sys.exit(0)
    """
    proc = cli(exported, [], setup=setup, timeout=120, fake=False)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    assert proc.returncode == 0 and len(results) == len(cases) + 1, proc.stderr[-2000:]
    for (rc, err), needle in zip(results, [needle for _, needle in cases] + ["FIFO"]):
        one_line_error(rc, err, needle)
    assert not (tmp_path / "o.mp4").exists()


def test_big_endian_latent_simply_works(exported, tmp_path, capsys):
    from src.pipeline import FaceAnimator

    w = exported["module"].sample_latents(1, seed=4).numpy()
    np.save(tmp_path / "le.npy", w)
    np.save(tmp_path / "be.npy", w.astype(">f4"))
    np.savez(tmp_path / "be.npz", ws=w.astype(">f8"))
    assert np.load(tmp_path / "be.npy").dtype.byteorder == ">"
    pipe = FaceAnimator.from_pretrained(exported["path"])
    native = pipe.face_latent(str(tmp_path / "le.npy"))
    for name in ("be.npy", "be.npz"):
        torch.testing.assert_close(pipe.face_latent(str(tmp_path / name)), native)
    out = tmp_path / "o.gif"
    rc, err = run_main([f"checkpoint={exported['path']}", f"latent={tmp_path / 'be.npy'}", "frames=2",
                        f"output={out}", "strip=false"], capsys)
    assert rc == 0 and out.is_file(), err


@pytest.mark.parametrize("w_dim,needle", [(1_000_000, "beyond"), (100_000, "do not match the architecture")])
def test_sidecar_sizes_are_checked_before_allocating(exported, tmp_path, capsys, monkeypatch, w_dim, needle):
    """A sidecar's w_dim of 1e6 used to allocate gigabytes before failing: now its sizes are bounded and
    checked against the stored tensors on the meta device; the real Generator is never built."""
    import src.stylegan.native as native

    built = []
    monkeypatch.setattr(native, "Generator", lambda **kw: built.append(kw))
    folder = tmp_path / "assets"
    shutil.copytree(exported["tmp"], folder)
    meta = json.loads((folder / "G.json").read_text())
    (folder / "G.json").write_text(json.dumps({**meta, "init_kwargs": {**meta["init_kwargs"], "w_dim": w_dim}}))
    rc, err = run_main([f"checkpoint={folder / 'animator.safetensors'}", f"output={tmp_path / 'o.mp4'}"], capsys)
    one_line_error(rc, err, needle)
    assert not built


def test_weights_file_sidecars_are_checked_before_allocating(tmp_path):
    from src.embedded.oracle import AttributeOracle, load_oracle, save_oracle

    save_oracle(AttributeOracle(resolution=16, width=2, hidden=4), tmp_path / "o")
    meta = json.loads((tmp_path / "o.json").read_text())
    for change, needle in (({"hidden": 10 ** 9}, "beyond"), ({"hidden": 100_000}, "do not match"),
                           ({"width": -3}, "")):
        (tmp_path / "o.json").write_text(json.dumps({**meta, "init_kwargs": {**meta["init_kwargs"], **change}}))
        with pytest.raises(UserError, match=needle):
            load_oracle(tmp_path / "o")


# ----------------------------------------------------------------------------- writes that fail
def test_read_only_folder_ends_in_one_line_before_any_work(exported, tmp_path, capsys, monkeypatch):
    video, strip = old_pair(tmp_path)

    def read_only(target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(uio, "_new_temp", read_only)
    monkeypatch.setattr("src.pipeline.FaceAnimator.from_pretrained", lambda *a, **k: pytest.fail("did work"))
    rc, err = run_main([f"checkpoint={exported['path']}", f"output={video}"], capsys)
    one_line_error(rc, err, f"cannot write {video}: Read-only file system; the old file is unchanged")
    assert_old_intact(video, strip)


def unshared(script: str) -> list[str]:
    """A command prefix: ``script`` (then the command, as "$@") in a private mount namespace; skips
    the test where that is not allowed (it needs root, unshare -m and CAP_SYS_ADMIN)."""
    prefix = ["unshare", "-m", "sh", "-c", script, "sh"]
    try:
        ok = bool(shutil.which("unshare")) and subprocess.run([*prefix, "true"], capture_output=True,
                                                               timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("no private mounts here (needs root, unshare -m and CAP_SYS_ADMIN)")
    return prefix


def test_read_only_mount_for_real(exported, tmp_path):
    video, strip = old_pair(tmp_path / "ro")
    folder = video.parent
    if os.geteuid() != 0:
        folder.chmod(0o555)
        prefix = []
    else:
        prefix = unshared(f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && exec "$@"')
    try:
        proc = cli(exported, [f"output={video}"], prefix=prefix)
    finally:
        folder.chmod(0o755)
    one_line_error(proc.returncode, proc.stderr, f"cannot write {video}")
    assert_old_intact(video, strip)


@pytest.mark.parametrize("failure", ["enospc", "truncated", "empty", "strip"])
def test_failed_write_keeps_the_old_pair(exported, tmp_path, capsys, monkeypatch, failure):
    """ffmpeg on a full disk used to exit quietly with a 4 KB unreadable mp4 that replaced a good one;
    the strip's ENOSPC was a traceback after the new video had replaced the old one."""
    from PIL import Image

    video, strip = old_pair(tmp_path)
    real = uvideo.encode_mp4

    def broken(data, path, fps):
        if failure in ("truncated", "empty"):
            real(data, path, fps)
            os.truncate(path, path.stat().st_size // 2 if failure == "truncated" else 0)
            return
        path.write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failure == "strip":
        monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: broken(None, Path(fp), None))
    else:
        monkeypatch.setattr(uvideo, "encode_mp4", broken)
    rc, err = run_main([f"checkpoint={exported['path']}", f"output={video}"], capsys)
    cause = {"truncated": "does not read back", "empty": "empty"}.get(failure, "No space left on device")
    one_line_error(rc, err, f"cannot write {strip if failure == 'strip' else video}: ")
    assert cause in err and err.strip().endswith("the old file is unchanged"), err
    assert_old_intact(video, strip)


@pytest.mark.parametrize("failing", ["a.mp4", "a.png"])
def test_file_size_limit_for_real(exported, tmp_path, failing):
    """RLIMIT_FSIZE below the video's size (ffmpeg is killed by SIGXFSZ) or between the video's and the
    strip's (Python's write gets EFBIG): one line, the old pair kept."""
    import resource

    limit = 512
    if failing == "a.png":  # the sizes this animation's files have
        proc = cli(exported, [f"output={tmp_path / 'sizes' / 'a.mp4'}"])
        assert proc.returncode == 0, proc.stderr
        mp4, png = ((tmp_path / "sizes" / n).stat().st_size for n in ("a.mp4", "a.png"))
        if png <= mp4 + 1:
            pytest.skip(f"the strip ({png} B) is not larger than the video ({mp4} B)")
        limit = mp4 + 1
    video, strip = old_pair(tmp_path)
    proc = cli(exported, [f"output={video}"],
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    one_line_error(proc.returncode, proc.stderr, f"cannot write {tmp_path / failing}: File too large")
    assert_old_intact(video, strip)


@pytest.mark.parametrize("size_kb,failing", [(4, "a.mp4"), (8, "a.png")])
def test_full_disk_for_real(exported, tmp_path, size_kb, failing):
    """A tmpfs of one 4 KB page, the old video's (the new one does not fit), or two (the new strip does
    not): ENOSPC from ffmpeg or from Python."""
    folder = tmp_path / "small"
    folder.mkdir()
    prefix = unshared(f"mount -t tmpfs -o size={size_kb}k tmpfs {folder} && printf %s '{OLD.decode()}' > "
                      f'{folder}/a.mp4 && {{ "$@"; rc=$?; cat {folder}/a.mp4; echo; ls -a {folder}; exit $rc; }}')
    proc = cli(exported, [f"output={folder / 'a.mp4'}"], prefix=prefix)
    one_line_error(proc.returncode, proc.stderr, f"cannot write {folder / failing}: No space left on device")
    old, listing = proc.stdout.split("\n", 1)
    assert old == OLD.decode() and ".tmp" not in listing and "a.png" not in listing, proc.stdout


# ----------------------------------------------------------------------------- signals and kill -9
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_video_write_removes_the_temporary(exported, tmp_path, sig, code):
    video, strip = old_pair(tmp_path)
    setup = f"""
        import os, signal, time
        import src.utils.video as v
        def slow(data, path, fps):
            path.write_bytes(b"partial")
            os.kill(os.getpid(), {int(sig)})
            time.sleep(30)
        v.encode_mp4 = slow
    """
    proc = cli(exported, [f"output={video}"], setup=setup, timeout=60)
    one_line_error(proc.returncode, proc.stderr, "", code=code)
    assert_old_intact(video, strip)


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "clip.gif"
    kill9 = f"import os, signal\nfrom src.utils.io import atomic_write\nwith atomic_write({str(target)!r}) as tmp:\n" \
            "    tmp.write_bytes(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([sys.executable, "-c", kill9], cwd=ROOT, timeout=60).returncode == -signal.SIGKILL
    stale, = leftovers(tmp_path)
    host, pid, rest = stale.split("-", 2)
    alive = tmp_path / f"{host}-{os.getppid()}-{rest}"  # the same file's, of a process that still runs
    other = tmp_path / ".other.abcdef-1-0123abcd.tmp.gif"  # another file's
    for path in (alive, other):
        path.write_bytes(b"x")
    uvideo.write_video(torch.zeros(2, 3, 8, 8), target)
    assert leftovers(tmp_path) == sorted([alive.name, other.name]) and target.is_file()


# ----------------------------------------------------------------------------- text, JSON, PNG writers
def test_text_and_png_writers_check_what_they_wrote(tmp_path, monkeypatch):
    """An evaluation JSON or a PNG cut short without an exception (as a full disk may leave them)."""
    from PIL import Image

    json_file, png = tmp_path / "r.json", uvideo.write_strip(torch.zeros(2, 3, 8, 8), tmp_path / "s.png")
    uio.atomic_write_text(json_file, '{"old": 1}')
    before = png.read_bytes()
    real_write, real_save = Path.write_bytes, Image.Image.save
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: real_write(self, data[: len(data) // 2]))
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: (real_save(self, fp, *a, **k),
                                                                        os.truncate(fp, os.path.getsize(fp) - 20)))
    with pytest.raises(UserError, match=r"r\.json: the written file does not read back"):
        uio.atomic_write_text(json_file, json.dumps({"new": list(range(100))}))
    with pytest.raises(UserError, match=r"s\.png: the written file does not read back"):
        uvideo.write_strip(torch.ones(2, 3, 8, 8), png)
    assert json_file.read_text() == '{"old": 1}' and png.read_bytes() == before and not leftovers(tmp_path)


def test_an_atomic_write_leaves_the_mode_a_new_file_gets(tmp_path):
    """A writer that swaps the temporary for a private file of its own (safetensors writes 0600) must
    not make the result unreadable to the rest of a shared group."""
    import stat as stat_mod

    from src.utils import io

    def private_writer(tmp):
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"weights")
        os.close(fd)

    with io.atomic_write(tmp_path / "w.bin") as tmp:
        private_writer(tmp)
    assert stat_mod.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o666 & ~io._UMASK
    assert (tmp_path / "w.bin").read_bytes() == b"weights"

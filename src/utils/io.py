"""Atomic file writes: a reader never sees a half-written file, a failed write leaves nothing behind.

``atomic_write(path, verify=)``: the writer fills a temporary file beside ``path``, which is flushed,
checked (not empty; ``verify`` decodes it) and only then renamed onto ``path``. On any failure,
Ctrl-C, SIGTERM or SIGHUP it is removed and the old file stays as it was; a full disk or a read-only
folder is one :class:`WriteError` line naming the path and the cause. A killed writer's (kill -9)
temporaries go at the next write of the same file. ``together()``: several writes, all or nothing.

Reading: ``check_input_file`` refuses FIFOs, devices and folders before anything opens them;
``check_architecture`` compares a JSON sidecar's network with the tensors a weights file stores,
before a byte of that network is allocated."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from src.utils.errors import UserError, first_line

FOREIGN_TEMP_AGE_S = 3600.0  # another host's temporary is stale after this long unmodified
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_STEM_CHARS = 100  # of the target's stem in a temporary name (names stay under 255 bytes)
_UMASK = os.umask(0o022)  # read once (setting it is the only way to read it), then put back
os.umask(_UMASK)
_local = threading.local()


class WriteError(UserError, OSError):
    """A write that failed (disk full, read-only folder, an unreadable result): one line."""
    def __init__(self, message: str, code: Optional[int] = None, cause: str = ""):
        OSError.__init__(self, code, cause or message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Terminated(SystemExit):
    """SIGTERM / SIGHUP during a write, raised to remove temporaries; exit code 128 + the signal."""
    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def write_error(target: Path, e: BaseException) -> WriteError:
    """The one line for a failed write of ``target``: the path, the cause, and that an old file is kept."""
    if isinstance(e, WriteError):
        return e
    cause = (e.strerror if isinstance(e, OSError) and e.strerror else None) or first_line(e)
    kept = "; the old file is unchanged" if target.is_file() else ""
    return WriteError(f"cannot write {target}: {cause}{kept}", getattr(e, "errno", None), cause)


def file_kind(st: os.stat_result) -> str:
    """'a folder', 'a FIFO (named pipe)', ... for what is not a regular file."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (lambda m: True, "not a regular file"))
    return next(name for test, name in kinds if test(st.st_mode))


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` (``~`` expanded), refused before anything opens it when it exists but is not a regular
    file (a FIFO would block the reader forever, a device never ends). A missing file passes: its
    loader says what it is and where to get it."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return p
    except OSError as e:
        raise UserError(f"{_named(what, p)}: cannot read ({e.strerror or first_line(e)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{_named(what, p)} is {file_kind(st)}, not a regular file")
    return p


def _lead(where: str) -> str:
    return f"{where}: " if where else ""


def _named(what: str, p: Path) -> str:
    """'image=face.png' for a command-line key (what ends with '='), else 'latent face.npy'."""
    return f"{what}{p}" if what.endswith("=") else f"{what} {p}"


def check_output_path(path: str | os.PathLike, what: str = "output", probe: bool = True) -> Path:
    """Fail before any work when ``path`` cannot be written: it is a folder or another non-regular
    file, a parent is a file, or the folder refuses a new file (read-only, not writable, no inodes
    left; ``probe``: found by creating and removing a temporary file there)."""
    p = Path(path).expanduser()
    with contextlib.suppress(OSError):
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{_named(what, p)} is {file_kind(st)}: give a file name")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {p}: {folder} is not a folder")
    try:
        if probe and folder == p.parent:
            _unlink(_new_temp(p))
        elif not os.access(folder, os.W_OK | os.X_OK):
            raise OSError(errno.EROFS if os.statvfs(folder).f_flag & os.ST_RDONLY else errno.EACCES, "")
    except OSError as e:
        raise write_error(p, OSError(e.errno, os.strerror(e.errno) if e.errno else first_line(e))) from None
    return p


def _temp_pattern(target: Path) -> re.Pattern:
    stem, suffix = re.escape(target.stem[:_STEM_CHARS]), re.escape(target.suffix)
    return re.compile(rf"\.{stem}\.([0-9a-f]{{6}})-(\d+)-[0-9a-f]{{8}}\.tmp{suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temporaries of ``target`` whose writer is gone: of this host, its process has ended (a
    kill -9); of another host, unmodified for ``FOREIGN_TEMP_AGE_S``. Returns the removed paths."""
    pattern, removed = _temp_pattern(target), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            m = pattern.fullmatch(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False):
                continue
            host, pid = m.group(1), int(m.group(2))
            with contextlib.suppress(OSError):
                stale = (not _pid_alive(pid) if host == _HOST and pid != os.getpid()
                         else host != _HOST and time.time() - entry.stat().st_mtime > FOREIGN_TEMP_AGE_S)
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _new_temp(target: Path) -> Path:
    """A new empty ``.<stem>.<host>-<pid>-<random>.tmp<suffix>`` beside ``target`` (0666 less umask)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.stem[:_STEM_CHARS]}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
                               f".tmp{target.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target))


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` inside (where their handler is the default, in the
    main thread): temporaries are removed on the way out, as Ctrl-C's KeyboardInterrupt does."""
    installed = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                installed.append((sig, signal.signal(sig, _raise_terminated)))
    try:
        yield
    finally:
        for sig, old in installed:
            signal.signal(sig, old)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _settle(tmp: Path, verify: Optional[Callable[[Path], None]], allow_empty: bool) -> None:
    """Flush ``tmp`` to disk (a deferred ENOSPC shows here), then check it: not empty, ``verify``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    # a writer may have replaced the temporary with a private (0600) file of its own (safetensors does)
    os.chmod(tmp, 0o666 & ~_UMASK)
    if size == 0 and not allow_empty:
        raise OSError(errno.EIO, "the written file is empty (nothing reached the disk)")
    try:
        if verify is not None:
            verify(tmp)
    except Exception as e:
        raise OSError(errno.EIO, f"the written file does not read back ({first_line(e)})") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, verify: Optional[Callable[[Path], None]] = None,
                 allow_empty: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (with its suffix: writers pick formats from it); when the
    block ends, flush it, check it (non-empty unless ``allow_empty``; ``verify(tmp)`` raises if it does
    not decode) and rename it onto ``path`` (in :func:`together`: at the group's end). An OSError or a
    failed check is one :class:`WriteError` line; on any exception or signal the temporary is removed."""
    target = Path(path)
    tmp: Optional[Path] = None
    with _signals_unwind():
        try:
            check_output_path(target, probe=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(target)
            tmp = _new_temp(target)
            yield tmp
            _settle(tmp, verify, allow_empty)
            group = getattr(_local, "groups", None)
            if group:
                group[-1].append((tmp, target))
            else:
                os.replace(tmp, target)
        except BaseException as e:
            if tmp is not None:
                _unlink(tmp)
            if isinstance(e, OSError):
                raise write_error(target, e) from None
            raise


@contextlib.contextmanager
def together() -> Iterator[None]:
    """All-or-nothing for the atomic writes inside: each is written and checked, and the renames
    happen only once every one succeeded (a failed PNG strip keeps the old video too)."""
    groups = _local.__dict__.setdefault("groups", [])
    pending: list[tuple[Path, Path]] = []
    groups.append(pending)
    with _signals_unwind():
        try:
            yield
            groups.pop()
            while pending:
                tmp, target = pending[0]
                try:
                    os.replace(tmp, target)
                except OSError as e:
                    raise write_error(target, e) from None
                pending.pop(0)
        except BaseException:
            if groups and groups[-1] is pending:
                groups.pop()
            for tmp, _ in pending:
                _unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8), checked by reading it back."""
    data = text.encode("utf-8")

    def same_bytes(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise ValueError(f"{tmp.stat().st_size} of {len(data)} bytes read back")

    with atomic_write(path, verify=same_bytes, allow_empty=not data) as tmp:
        tmp.write_bytes(data)


#: bounds on every number a sidecar describes a network with (sizes, counts) and on its nesting
SIDECAR_MAX_INT = 1 << 17
SIDECAR_MAX_ITEMS = 64


def check_sidecar_values(value: Any, where: str, key: str = "", depth: int = 0) -> None:
    """Refuse a sidecar value no network has: an integer beyond +-2**17, a float that is not finite,
    more than 64 items or 4 levels, a string over 256 characters."""
    bad = None
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        bad = abs(value) > SIDECAR_MAX_INT and f"{value} is beyond +-{SIDECAR_MAX_INT}"
    elif isinstance(value, float):
        bad = not (abs(value) < 1e9) and f"{value} is not a sane number"
    elif isinstance(value, str):
        bad = len(value) > 256 and "a string of over 256 characters"
    elif isinstance(value, (list, dict)):
        bad = (len(value) > SIDECAR_MAX_ITEMS or depth >= 4) and "too many items or levels"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items if not bad else ():
            check_sidecar_values(v, where, f"{key}.{k}" if key else str(k), depth + 1)
    else:
        bad = f"a {type(value).__name__}"
    if bad:
        raise UserError(f"{_lead(where)}{key or 'value'}: {bad}")


def sha256_files(files, chunk: int = 1 << 20) -> str:
    """Hex sha256 over the bytes of ``files`` in the given order (pins frozen weights in checkpoints)."""
    h = hashlib.sha256()
    for path in files:
        with open(check_input_file(path, "file"), "rb") as f:  # a FIFO would block here forever
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()

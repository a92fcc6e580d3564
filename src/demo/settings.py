"""The ``demo.*`` keys of ``conf/demo.yaml``: the lines of ``--help``, the check of a key's name
before Hydra sees it, and the checks of their values (one UserError line each)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence

from src.utils.errors import UserError

#: the largest upload a visitor may send, whatever demo.max_upload_mb says
UPLOAD_CAP_MB = 1024


@dataclass(frozen=True)
class Settings:
    """The checked ``demo`` group."""
    checkpoint: str
    host: str
    port: int
    device: str
    queue_size: int
    max_upload_mb: float

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def demo_keys() -> list[tuple[str, str, str]]:
    """(key, default, comment) of every line of the ``demo:`` block of conf/demo.yaml."""
    from src.config.compose import ROOT

    rows, inside = [], False
    for line in (ROOT / "conf" / "demo.yaml").read_text().splitlines():
        if line and line[0] not in " #":
            inside = line.startswith("demo:")
            continue
        if inside and line.strip() and not line.strip().startswith("#") and ":" in line:
            key, _, rest = line.strip().partition(":")
            value, _, comment = rest.partition("#")
            rows.append((f"demo.{key.strip()}", value.strip(), comment.strip()))
    return rows


def settings_help() -> str:
    rows = demo_keys()
    width = max(len(f"{k}={v}") for k, v, _ in rows)
    return "\n".join(f"  {f'{k}={v}':<{width}}  {c}" for k, v, c in rows)


def check_keys(argv: Sequence[str]) -> None:
    """A UserError naming the first argument that sets no key of the demo (``demo.prot=1``, ``port=1``),
    with the nearest key; others (syntax, values) are the config shell's to judge."""
    keys = [k for k, _, _ in demo_keys()]
    for arg in argv:
        name, sep, _ = arg.partition("=")
        name = name.lstrip("+~")
        if not sep or name in keys or name.startswith("paths.") or name.startswith("hydra."):
            continue
        near = difflib.get_close_matches(name if name.startswith("demo.") else f"demo.{name}", keys, n=1)
        hint = f"did you mean {near[0]}?" if near else f"the demo takes {', '.join(keys)};"
        raise UserError(f"unknown key '{name}' ({hint} --help explains them)")


def check_settings(demo) -> Settings:
    """The composed ``demo`` group as Settings, once every value is in range."""
    from src.config.cli import parse_device

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    need(bool(str(demo.host).strip()), "demo.host must name an address, e.g. 127.0.0.1")
    need(1 <= demo.port <= 65535, f"demo.port must be in 1..65535, got {demo.port}")
    need(demo.queue_size >= 1, f"demo.queue_size must be >= 1, got {demo.queue_size}")
    need(0 < demo.max_upload_mb <= UPLOAD_CAP_MB,
         f"demo.max_upload_mb must be in (0, {UPLOAD_CAP_MB}], got {demo.max_upload_mb}")
    device = str(parse_device(demo.device))
    return Settings(checkpoint=str(demo.checkpoint), host=str(demo.host).strip(), port=int(demo.port),
                    device=device, queue_size=int(demo.queue_size), max_upload_mb=float(demo.max_upload_mb))

"""The shell every inference command line shares (animate.py, evaluate.py): ``--help`` (the
docstring and every key of the command's config with its default and meaning), the composed config,
warnings as one ``warning: ...`` line, one ``error: ...`` line and exit code 2 for bad input, 130
for Ctrl-C."""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Optional, Sequence

from src.utils.errors import UserError
from src.utils.log import show_warnings


def config_help(config_name: str) -> str:
    """The keys of ``conf/<config_name>.yaml`` with their defaults and comments, one line each."""
    from src.config.compose import ROOT

    rows = []
    for line in (ROOT / "conf" / f"{config_name}.yaml").read_text().splitlines():
        if not line or line[0] in " #-" or ":" not in line or line.startswith("defaults:"):
            continue
        key, _, rest = line.partition(":")
        value, _, comment = rest.partition("#")
        rows.append((key.strip(), value.strip(), comment.strip()))
    width = max(len(f"{k}={v}") for k, v, _ in rows)
    return "\n".join(f"  {f'{k}={v}':<{width}}  {c}" for k, v, c in rows)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_command(config_name: str, argv: Optional[Sequence[str]], doc: str, run: Callable[[Any], str],
                verbatim: Sequence[str] = ()) -> int:
    """Compose ``conf/<config_name>.yaml`` with ``argv`` and call ``run(cfg)``, which returns the line
    to print when it succeeds. ``verbatim``: keys whose values are taken as typed (see compose).
    Returns the process exit code."""
    from src.config.compose import compose_config
    from src.utils.cpu_memory import reuse_freed_memory

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(doc.strip() + f"\n\nKeys (key=default, conf/{config_name}.yaml):\n" + config_help(config_name))
        return 0
    reuse_freed_memory()  # CPU inference reuses freed activations instead of faulting fresh pages in
    show_warnings()
    warnings.formatwarning = _one_line_warning
    try:
        done = run(compose_config(config_name, argv, verbatim))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: ask for fewer frames= (or faces/batch=), or free memory", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "out of memory" not in str(e):
            raise
        print("error: out of GPU memory: ask for fewer frames= (or batch=), or run with device=cpu", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if done:
        print(done)
    return 0

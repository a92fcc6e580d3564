"""The shell every inference command line shares (animate.py, evaluate.py): ``--help``, the composed
config, one ``error: ...`` line and exit code 2 for bad input, 130 for Ctrl-C."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

from src.utils.errors import UserError


def run_command(config_name: str, argv: Optional[Sequence[str]], doc: str, run: Callable[[Any], str]) -> int:
    """Compose ``conf/<config_name>.yaml`` with ``argv`` and call ``run(cfg)``, which returns the line
    to print when it succeeds. Returns the process exit code."""
    from src.config.compose import compose_config
    from src.utils.cpu_memory import reuse_freed_memory

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        return 0
    reuse_freed_memory()  # CPU inference reuses freed activations instead of faulting fresh pages in
    try:
        done = run(compose_config(config_name, argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(done)
    return 0

"""The shell every inference command line shares (animate.py, evaluate.py): ``--help`` (the
docstring and every key of the command's config with its default and meaning), the composed config,
warnings as one ``warning: ...`` line, one ``error: ...`` line and exit code 2 for bad input, 130
for Ctrl-C, 128 + the signal for SIGTERM / SIGHUP during a write (whose temporary file is removed).
Also the checks of values the config's types cannot make: the device, the text of a prompt."""
from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Optional, Sequence

from src.utils.errors import UserError
from src.utils.io import Terminated
from src.utils.log import show_warnings

#: the device types a command runs on (device=cuda:1 picks a GPU)
DEVICE_TYPES = ("cpu", "cuda", "mps")


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
    from src.config.hydra_errors import unknown_additions
    from src.utils.cpu_memory import reuse_freed_memory

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(doc.strip() + f"\n\nKeys (key=default, conf/{config_name}.yaml):\n" + config_help(config_name))
        return 0
    reuse_freed_memory()  # CPU inference reuses freed activations instead of faulting fresh pages in
    show_warnings()
    warnings.formatwarning = _one_line_warning
    try:
        unknown_additions(config_name, argv)
        done = run(compose_config(config_name, argv, verbatim))
    except Terminated as e:
        print(f"error: stopped by {e.signal_name}; the file being written was removed", file=sys.stderr)
        return int(e.code)
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


def parse_device(name: Any):
    """``device=`` as a torch.device: cpu, cuda, cuda:N (a GPU that exists) or mps; else a UserError."""
    import torch

    text = str(name).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise UserError(f"device={name}: not a device here; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} but MPS is not available")
    return device


def prompt_text(value: Any) -> str | list[str]:
    """``text=`` as given: a sentence, or a list of sentences (a JSON list of strings). Refused: no
    text (null, deleted), a mapping ({a: 1}), a list of anything but non-empty strings."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, (ListConfig, list, tuple)):
        items = list(value)
        if not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise UserError(f"text={value}: a list of prompts must hold non-empty sentences "
                            "(text='[\"The person is smiling.\", \"The person is angry.\"]')")
        return items
    if isinstance(value, (DictConfig, dict)):
        raise UserError(f"text={value}: give a sentence (or a JSON list of sentences), not a mapping")
    if not isinstance(value, str) or value.strip().lower() in ("", "null", "none", "~"):
        raise UserError(f"text={value if value is not None else 'null'}: give a sentence, e.g. "
                        "text=\"The person is smiling.\"")
    text = value.strip()
    if (text[0], text[-1]) in (("{", "}"), ("[", "]")):
        raise UserError(f"text={value}: a list of prompts is a JSON list of strings "
                        "(text='[\"The person is smiling.\", \"The person is angry.\"]'); a sentence is plain text")
    return value

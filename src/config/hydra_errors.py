"""The command line's own config errors (Hydra/OmegaConf: a misspelt key, an unknown option, a value
of the wrong type, bad override syntax) as one line naming the argument and what would be accepted."""
from __future__ import annotations

import difflib
import os
from typing import Optional, Sequence

from src.utils.errors import first_line

def override_of(key: str, argv: Sequence[str]) -> Optional[str]:
    """The command-line argument that sets ``key`` (``key=...``, ``+key=...``, ``~key``), if any."""
    for arg in argv:
        name = arg.split("=", 1)[0].lstrip("+~")
        if name == key:
            return arg
    return None


def config_error_line(e: BaseException, argv: Sequence[str]) -> Optional[str]:
    """One line for an error of the command line's config (Hydra/OmegaConf), naming the argument and
    what would be accepted; None for any other exception (a bug: its traceback is kept)."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(e, OverrideParseException):
        return (f"cannot read the argument '{e.override}': {first_line(Exception(e.message))} "
                "(the syntax is key=value; see https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in str(e.missing_cfg_file):
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        if e.options:
            return f"{group}={option}: no such {group} option; choose one of {', '.join(e.options)}"
        return f"{group}={option}: no such option (there is no conf/{group}/ folder)"
    cause = e.__cause__ if isinstance(e, ConfigCompositionException) else e
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        full_key = str(cause.full_key)
        arg = override_of(full_key, argv) or full_key
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent, _, name = full_key.rpartition(".")
            node = getattr(cause, "parent_node", None)
            keys = [str(k) for k in node.keys() if str(k) != "hydra"] if node is not None and hasattr(node, "keys") else []
            near = difflib.get_close_matches(name, keys, n=3)
            where = parent or "the config"
            line = f"{arg}: {where} has no key '{name}'"
            if near:
                line += f" (did you mean {' or '.join(near)}?)"
            elif keys:
                line += f"; its keys: {', '.join(keys)}"
            if parent == "trainer":
                line += f"; another pytorch_lightning.Trainer argument is added with +{arg.lstrip('+')}"
            return line
        # ValidationError (a value of the wrong type or not in an enum), interpolation errors...
        return f"{arg}: {first_line(Exception(getattr(cause, 'msg', None) or str(cause)))}"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        skip = ("full_key:", "object_type", "reference_type", "Config search path", "provider=",
                "Set the environment", "To append to your config")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(skip)]
        if isinstance(e.__cause__, OmegaConfBaseException):
            lines.append(first_line(e.__cause__))
        return " ".join(lines) or type(e).__name__
    if isinstance(e, ValueError) and _raised_in_hydra(e):  # Hydra's checks of its flags (--cfg with -m, ...)
        return first_line(e)
    return None


def _raised_in_hydra(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename


def unknown_flags(argv: Sequence[str]) -> list[str]:
    """Arguments starting with '-' that Hydra's own parser does not know (it would print its usage)."""
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:
        return []
    try:
        _, unknown = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # a known flag with a bad value: Hydra's parser says so itself below
        return []
    return [a for a in unknown if a.startswith("-")]


def unknown_additions(config_name: str, argv: Sequence[str]) -> None:
    """Refuse ``+key=value`` / ``++key=value`` of a key the command's schema does not have (Hydra would
    add it silently, where a misspelt ``key=value`` already fails) and ``~key`` (a command's keys all
    have a meaning: set one to null instead). UserError naming the argument."""
    from src.utils.errors import UserError

    deleted = next((a for a in argv if a.startswith("~")), None)
    if deleted:
        key = deleted[1:].split("=", 1)[0]
        raise UserError(f"{deleted}: {config_name} keys cannot be deleted; set {key}=<value> instead")
    added = [a for a in argv if a.startswith("+") and "=" in a]
    if not added:
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig

    from src.config.compose import top_keys
    from src.config.schema import register_configs

    register_configs()
    schema = ConfigStore.instance().load(f"{config_name}_schema.yaml").node
    for arg in added:
        node, parts = schema, arg.split("=", 1)[0].lstrip("+").split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, DictConfig) and part in node:
                node = node._get_node(part)
                continue
            if depth == 0:
                raise UserError(f"{arg}: unknown key '{part}' ({config_name} takes: "
                                f"{', '.join(top_keys(config_name))}; --help explains them)")
            parent = ".".join(parts[:depth])
            keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            near = difflib.get_close_matches(part, keys, n=3)
            hint = f" (did you mean {' or '.join(near)}?)" if near else f"; its keys: {', '.join(keys)}"
            raise UserError(f"{arg}: {parent} has no key '{part}'{hint if keys else ''}")

"""Procedural captioned faces with known identity and expression parameters.

    from src.embedded import render, ParamSpace, PARAMS, sample_params, vocabulary
"""
from src.embedded import vocabulary
from src.embedded.params import (
    HAIR_STYLES,
    NUM_PARAMS,
    PARAM_SPACE,
    PARAMS,
    ParamSpace,
    ParamSpec,
    neutral_params,
    observable_mask,
    sample_params,
)
from src.embedded.render import render

__all__ = ["render", "ParamSpace", "ParamSpec", "PARAMS", "PARAM_SPACE", "NUM_PARAMS", "HAIR_STYLES",
           "sample_params", "neutral_params", "observable_mask", "vocabulary"]

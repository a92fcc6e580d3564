"""Procedural captioned faces with known identity and expression parameters.

    from src.data.synthetic import render, ParamSpace, PARAMS, sample_params, vocabulary
"""
from src.data.synthetic import vocabulary
from src.data.synthetic.params import (
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
from src.data.synthetic.render import render

__all__ = ["render", "ParamSpace", "ParamSpec", "PARAMS", "PARAM_SPACE", "NUM_PARAMS", "HAIR_STYLES",
           "sample_params", "neutral_params", "observable_mask", "vocabulary"]

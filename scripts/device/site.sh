#!/usr/bin/env bash
# Sourced by the device scripts: the Python packages a GPU machine lacks, from the repository root.
# The machine has torch, Lightning, safetensors and the rest, not hydra-core, omegaconf (+ antlr4),
# open_clip_torch (+ ftfy, wcwidth). Either carry them installed, as .carry/site, or carry their
# wheels as .whl (made here, ignored by git through .git/info/exclude):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 open_clip_torch ftfy wcwidth
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # an sdist: built here
# The wheels (2.7 MiB) travel smaller than the installed packages; they are installed on arrival.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target .carry/site .whl/*.whl \
    || { echo "error: the wheels in .whl did not install" >&2; exit 2; }
fi
export PYTHONPATH=$PWD/.carry/site:$PWD PYTHONUNBUFFERED=1

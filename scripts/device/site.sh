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

# The CUDA ops build cache (src/ops/build.py) lives in .carry/lgfa_cache. A build an earlier run sent
# back (send_built_ops) travels packed as .carry/ops/lgfa_ops_<key>.so.xz (~2.5 MiB; it fits beside a
# GAN chunk's state) and is unpacked here, so the run skips the compile; a module that does not
# import is built again.
export LGFA_CACHE_DIR=${LGFA_CACHE_DIR:-$PWD/.carry/lgfa_cache}
for packed in .carry/ops/lgfa_ops_*.so.xz; do
  [ -f "$packed" ] || continue
  name=$(basename "$packed" .so.xz)
  mkdir -p "$LGFA_CACHE_DIR/$name"
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    "$packed" "$LGFA_CACHE_DIR/$name/$name.so" || echo "note: $packed did not unpack; the ops will be built" >&2
done

# send_built_ops DIR: the newest built ops module, packed, into DIR (one file); keep it as
#   mkdir -p .carry/ops && cp <files_at>/lgfa_ops_*.so.xz .carry/ops/     and carry ".carry/ops".
send_built_ops() {
  local so
  so=$(ls -t "$LGFA_CACHE_DIR"/lgfa_ops_*/lgfa_ops_*.so 2>/dev/null | head -1)
  [ -n "$so" ] || return 0
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], 'rb'), lzma.open(sys.argv[2], 'wb', preset=9))" \
    "$so" "$1/$(basename "$so").xz"
}

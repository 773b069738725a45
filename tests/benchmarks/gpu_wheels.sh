#!/usr/bin/env bash
# `make gpu-wheels`: fetch into .whl/ what the lent GPU box lacks (tests/benchmarks/gpu_wheels.txt), for
# gpu_suite.sh. Wheels: cp312 / pure-python manylinux builds, no deps. Source-only packages: the sdist's
# importable folder (sam2 with its configs/*.yaml) unpacked into .whl/src/ (PYTHONPATH there).
# xformers is not fetched: its wheel alone is far over the 64 MiB the working tree may carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.whl
LIST=tests/benchmarks/gpu_wheels.txt
# pip builds an sdist's metadata even to download it: with no build isolation (isolation would fetch torch
# for sam2) that needs setuptools + wheel: the project venv's python if present (SDIST_PY to choose).
SDIST_PY=${SDIST_PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
rm -rf "$DEST" && mkdir -p "$DEST/src" "$DEST/sdist"
grep -vE '^\s*(#|$)' "$LIST" | while read -r pin module kind; do
  if [ "$kind" = wheel ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DEST" "$pin"
  else
    SAM2_BUILD_CUDA=0 "$SDIST_PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$DEST/sdist" "$pin"
    archive=$(ls "$DEST"/sdist/"${pin%%==*}"-*.tar.gz "$DEST"/sdist/"${pin%%==*}"*.tar.gz 2>/dev/null | head -1)
    # the folder named like the import name at depth 2 (pkg-1.0/name) or 3 (pkg-1.0/src/name)
    inner=$(tar tzf "$archive" | grep -E "^[^/]+/(src/)?$module/__init__\.py$" | head -1)
    [ -n "$inner" ] || { echo "gpu-wheels: no $module/ package folder in $archive" >&2; exit 1; }
    strip=$(($(tr -dc / <<<"$inner" | wc -c) - 1))
    tar xzf "$archive" -C "$DEST/src" --strip-components="$strip" "${inner%/__init__.py}"
  fi
done
rm -rf "$DEST/sdist"
find "$DEST/src" -name '*.cu' -o -name '*.cpp' -o -name '__pycache__' | xargs rm -rf  # sam2's CUDA sources: never built
ls -la "$DEST" "$DEST/src"
du -sh "$DEST"

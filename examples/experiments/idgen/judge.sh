#!/usr/bin/env bash
# Draw the held-out people with a generator and judge the set (issue 18).
#   bash examples/experiments/idgen/judge.sh GENERATOR_DIR OUT [--set guidance={identity: 2.0}] ...
# GENERATOR_DIR: a train-generator `generator/` folder or any `checkpoints/step_N/`;
# extra arguments go to `c4s generate`. Writes OUT/ (the set) and OUT/report/ (report.md, judge.png).
set -euo pipefail
gen=$1; out=$2; shift 2
c4s=${C4S:-.venv/bin/c4s}
HF_HUB_OFFLINE=1 "$c4s" generate --config examples/experiments/idgen/generate-test.yaml \
  --set checkpoint="$gen" --out "$out" --no-progress "$@" >"$out.generate.json"
HF_HUB_OFFLINE=1 "$c4s" report-dataset --config examples/experiments/idgen/report-test.yaml \
  --set path="$out" --out "$out/report" --no-progress >"$out.report.json"
sed -n '/Identity fidelity/,/Diversity/p' "$out/report/report.md"

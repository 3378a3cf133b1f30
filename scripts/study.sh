#!/usr/bin/env bash
# The paper's comparison in miniature on the demo data: prefix, delayed, probe, pal, and
# the probe with one encoder (Whisper-type or AST-type) against the two-encoder ensemble;
# identical data and curriculum (configs/demo/study.yaml: the demo's stages, longer), 3 seeds each. Prints a
# table of mean +- std per task with the relative change against prefix, plus step time
# and peak memory per variant, and writes it to docs/study.md (scripts/study.py does the
# work; see its --help). 18 trainings of 7-23 minutes each on 2 cores (one encoder: 7-10):
# about 4.5 hours.
#
#   scripts/study.sh                                   everything (setup and data as demo.sh)
#   scripts/study.sh --variants prefix probe --seeds 1 --steps 150    a quicker look
#
# Each finished run leaves a record in docs/study/runs/ (commit it): a run recorded with the
# same configs and data is not trained again, so the study can be done in parts, on any clone.
#   scripts/study.sh --report-only                     the table from the records alone
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
case "${1:-}" in -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

scripts/setup.sh --targets "pal-train pal-eval"
bin=$(scripts/setup.sh --print-build-dir)
[ -f data/demo/stats.json ] && [ -f data/demo/llm/tokenizer.model ] || scripts/make_demo_data.sh data/demo
exec python3 scripts/study.py --bin "$bin" "$@"

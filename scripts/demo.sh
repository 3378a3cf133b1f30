#!/usr/bin/env bash
# The main job, from a fresh clone on Debian 12 (as root): install and build PAL, make the
# demo's audio question-answering set from Debian's audio packages, train a small PAL model
# from scratch through the curriculum (text, tones, encoders, align, probe, instruct),
# score it on the held-out test split with pal-eval, and answer a question about one real
# test clip with pal-infer. About 22 minutes on 2 cores: training 13, the first build 8.
#
#   scripts/demo.sh                  everything; run it again and finished steps are skipped
#   scripts/demo.sh --fresh          retrain (remove runs/demo first; the data is kept)
#
# Environment: PAL_DEMO_THREADS (LibTorch threads, default: cores), PAL_JOBS (compile jobs).
# Writes data/demo/ (the data set), runs/demo/<stage>/ (checkpoints, metrics.jsonl),
# runs/demo/eval.md + eval.json (scores per task, with chance levels in data/demo/stats.json).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
fresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) fresh=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

start=$(date +%s)
phase() { printf '\n== demo.sh [%s elapsed] %s\n' "$(date -u -d @$(( $(date +%s) - start )) +%M:%S)" "$*"; }

phase "1/5 setup: Debian packages and the build (scripts/setup.sh)"
scripts/setup.sh --targets "pal-train pal-eval pal-infer"
bin=$(scripts/setup.sh --print-build-dir)

phase "2/5 data: audio QA from Debian's audio packages (scripts/make_demo_data.sh -> data/demo)"
if [ -f data/demo/stats.json ] && [ -f data/demo/llm/tokenizer.model ] && [ -f data/demo/test.jsonl ]; then
  echo "data/demo is there (remove it to rebuild)"
else
  scripts/make_demo_data.sh data/demo
fi

phase "3/5 training: 6 stages (configs/demo/curriculum.yaml -> runs/demo)"
[ "$fresh" = 1 ] && rm -rf runs/demo
threads=${PAL_DEMO_THREADS:-$(nproc)}
# Keep even the largest freed activations in the heap (glibc; pal/core/runtime.h,
# configure_cpu_allocator): 8x fewer page faults than malloc's defaults.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1000000000}
"$bin/pal-train" --curriculum configs/demo/curriculum.yaml --set "threads=$threads"

phase "4/5 evaluation on the held-out test split (pal-eval)"
"$bin/pal-eval" --model runs/demo/instruct/final --name demo --majority data/demo/train.jsonl \
  --manifest data/demo/test.jsonl --tasks data/demo/stats.json \
  --batch-size 16 --max-new-tokens 24 --threads "$threads" \
  --json runs/demo/eval.json --markdown runs/demo/eval.md --predictions runs/demo/eval_predictions.jsonl
echo
echo "The column 'majority' is chance: every task answered with its most frequent training answer."
echo "Chance levels of the closed tasks (data/demo/stats.json: majority answer of the test split / uniform over classes):"
python3 - <<'EOF'
import json
tasks = json.load(open("data/demo/stats.json"))["tasks"]
for name, t in sorted(tasks.items()):
    if t.get("closed"):
        print(f"  {name:14s} majority {t['majority_rate_test']:.3f}   uniform {t['chance_uniform']:.3f}")
    else:
        print(f"  {name:14s} open answers; the majority answer matches {t['majority_rate_test']:.3f} of the test split")
EOF

phase "5/5 one real test clip answered by pal-infer"
clip=$(python3 -c '
import json
for line in open("data/demo/test.jsonl"):
    r = json.loads(line)
    if r["task"] == "cla":
        print(r["audio"]); break')
question="What kind of sound is this?"
echo "clip: data/demo/$clip"
echo "question: $question"
"$bin/pal-infer" --model runs/demo/instruct/final --audio "data/demo/$clip" --question "$question" --threads "$threads"

phase "done: scores in runs/demo/eval.md; the model in runs/demo/instruct/final"

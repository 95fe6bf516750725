#!/usr/bin/env bash
# Summary of a `ghnq train-ghn` log (OUT/train.jsonl): the mean training loss and accuracy over
# consecutive windows of WINDOW steps (default 50; skipped steps left out), the median seconds per
# step, and the periodic evaluations (mean top-1 % +- standard error).
#   scripts/train_summary.sh OUT/train.jsonl [WINDOW]
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: scripts/train_summary.sh OUT/train.jsonl [WINDOW] (the log of ghnq train-ghn)" >&2
  exit 2
fi
log=$1
window=${2:-50}
[ -r "$log" ] || { echo "train_summary: cannot read '$log'" >&2; exit 1; }
[[ "$window" =~ ^[1-9][0-9]*$ ]] || { echo "train_summary: WINDOW must be a positive integer, got '$window'" >&2; exit 1; }
grep -q '"event":"step"' "$log" || { echo "train_summary: '$log' holds no step lines of train-ghn" >&2; exit 1; }
# field(line, key): the value after "key": in a JSON line of the log, quotes removed (keys are unique
# per line, and the values read here hold no commas).
awk -v W="$window" '
  function field(line, key,   v) {
    if (!match(line, "\"" key "\":[^,}]*")) return ""
    v = substr(line, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
    gsub(/"/, "", v)
    return v
  }
  /"event":"step"/ {
    if ($0 ~ /"skipped":true/) next
    k = int(field($0, "step") / W)
    n[k]++; loss[k] += field($0, "loss"); acc[k] += field($0, "acc")
    if (k > last) last = k
    secs[++ns] = field($0, "seconds") + 0
    next
  }
  /"event":"eval"/ {
    ev[++ne] = sprintf("eval at step %d (%s): %.2f +- %.2f top-1 %% over %d architectures", field($0, "step"),
                       field($0, "group"), field($0, "mean"), field($0, "se"), field($0, "n"))
  }
  END {
    for (k = 0; k <= last; k++)
      if (n[k] > 0)
        printf "steps %d-%d: loss %.3f, accuracy %.3f (%d steps)\n", k * W, (k + 1) * W - 1, loss[k] / n[k], acc[k] / n[k], n[k]
    # median of the step times (insertion sort: a run has at most a few thousand steps)
    for (i = 2; i <= ns; i++) { v = secs[i]; j = i - 1; while (j > 0 && secs[j] > v) { secs[j + 1] = secs[j]; j-- } secs[j + 1] = v }
    med = ns % 2 ? secs[(ns + 1) / 2] : (secs[ns / 2] + secs[ns / 2 + 1]) / 2
    printf "median %.2f s per step over %d steps\n", med, ns
    for (i = 1; i <= ne; i++) print ev[i]
  }' "$log"

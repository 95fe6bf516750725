#!/usr/bin/env bash
# Per-group summary of a per-architecture CSV of `ghnq eval-ghn --csv`: n, mean top-1 +- standard
# error, median, max, min, how many architectures reach THRESHOLD % (default 70), and the lowest three.
#   scripts/eval_summary.sh EVAL.csv [THRESHOLD]
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: scripts/eval_summary.sh EVAL.csv [THRESHOLD] (a per-architecture CSV of ghnq eval-ghn --csv)" >&2
  exit 2
fi
f=$1
t=${2:-70}
[ -r "$f" ] || { echo "eval_summary: cannot read '$f'" >&2; exit 1; }
head -n 1 "$f" | grep -q '^name,group,num_params,top1,' ||
  { echo "eval_summary: '$f' is not an eval-ghn CSV (expected a header name,group,num_params,top1,...)" >&2; exit 1; }
[[ $t =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "eval_summary: THRESHOLD must be a number, got '$t'" >&2; exit 1; }
tail -n +2 "$f" | sort -t, -k2,2 -k4,4g | awk -F, -v T="$t" '
  function flush() {
    if (n == 0) return
    m = s / n; v = n > 1 ? (ss - n * m * m) / (n - 1) : 0; if (v < 0) v = 0
    med = n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
    low = ""; for (i = 1; i <= n && i <= 3; i++) low = low sprintf("%s%s %.2f", i > 1 ? ", " : "", nm[i], x[i])
    printf "%s: n %d, mean %.2f +- %.2f, median %.2f, max %.2f, min %.2f, %d at or above %g%%; lowest: %s\n",
           g, n, m, sqrt(v / n), med, x[n], x[1], hi, T, low
  }
  $2 != g { flush(); g = $2; n = 0; s = 0; ss = 0; hi = 0 }
  { n++; x[n] = $4 + 0; nm[n] = $1; s += $4; ss += $4 * $4; hi += ($4 + 0 >= T + 0) }
  END { if (NR == 0) { print "eval_summary: no architectures in the file" > "/dev/stderr"; exit 1 } flush() }'

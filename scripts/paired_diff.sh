#!/usr/bin/env bash
# Paired difference of two per-architecture CSVs of `ghnq eval-ghn --csv` (same architectures,
# e.g. two GHNs or two quantization settings): mean top-1 of A - B +- its standard error, and on how
# many architectures A is ahead / behind.
#   scripts/paired_diff.sh A.csv B.csv
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: scripts/paired_diff.sh A.csv B.csv (per-architecture CSVs of ghnq eval-ghn --csv)" >&2
  exit 2
fi
for f in "$1" "$2"; do
  [ -r "$f" ] || { echo "paired_diff: cannot read '$f'" >&2; exit 1; }
  head -n 1 "$f" | grep -q '^name,group,num_params,top1,' ||
    { echo "paired_diff: '$f' is not an eval-ghn CSV (expected a header name,group,num_params,top1,...)" >&2; exit 1; }
done
awk -F, -v A="$1" -v B="$2" '
  NR == FNR { if (FNR > 1) a[$1] = $4; na = FNR - 1; next }
  FNR > 1 {
    if (!($1 in a)) { printf "paired_diff: architecture %s of %s is not in %s\n", $1, B, A > "/dev/stderr"; bad = 1; exit 1 }
    d = a[$1] - $4; n++; s += d; ss += d * d; ahead += d > 0; behind += d < 0
  }
  END {
    if (bad) exit 1
    if (n != na || n < 2) { printf "paired_diff: %s has %d architectures, %s has %d (need the same, at least 2)\n", A, na, B, n > "/dev/stderr"; exit 1 }
    m = s / n; v = (ss - n * m * m) / (n - 1); if (v < 0) v = 0
    printf "A - B: %.2f +- %.2f top-1 points over %d architectures, A ahead on %d, behind on %d\n", m, sqrt(v / n), n, ahead, behind
  }' "$1" "$2"

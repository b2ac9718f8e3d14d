#!/usr/bin/env bash
# A/B of two `recuerda` binaries on one benchmark scenario, robust to this kind of VM's drift
# (its speed moves by up to a third between minutes): runs A and B alternately (A B, B A, …),
# short runs, and reports the median of the per-pair ratios B/A of the server's CPU per event.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [SCENARIO=b] [PAIRS=12] [DURATION=2s]
#
# e.g. keep the old build first: cp target/release/recuerda /tmp/recuerda-old, change, build,
#      scripts/bench-ab.sh /tmp/recuerda-old target/release/recuerda b 16
set -euo pipefail
a=${1:?old binary}; b=${2:?new binary}; scenario=${3:-b}; pairs=${4:-12}; duration=${5:-2s}
case "$scenario" in
  a) line='CPU per callback' ;;
  b) line='CPU per reply \(end to end\)' ;;
  *) echo "scenario must be a or b (CPU per event)" >&2; exit 2 ;;
esac
cpu() {
  "$1" bench --scenario "$scenario" --duration "$duration" 2>&1 \
    | grep -E "^  \($scenario\) $line" | awk '{for (i = 1; i <= NF; i++) if ($i == "µs") { print $(i-1); exit }}'
}
ratios=()
for ((r = 1; r <= pairs; r++)); do
  if ((r % 2)); then x=$(cpu "$a"); y=$(cpu "$b"); else y=$(cpu "$b"); x=$(cpu "$a"); fi
  ratio=$(awk -v x="$x" -v y="$y" 'BEGIN { printf "%.3f", y / x }')
  ratios+=("$ratio")
  echo "pair $r: A $x µs, B $y µs, B/A $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "median B/A over %d pairs: %.3f (lowest %s, highest %s)\n", NR, m, v[1], v[NR] }'

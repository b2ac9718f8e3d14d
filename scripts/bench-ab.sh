#!/usr/bin/env bash
# A/B of two `recuerda` binaries on one benchmark scenario, robust to this kind of VM's drift
# (its speed moves by up to a third between minutes): runs A and B alternately (A B, B A, …),
# short runs, and reports the median of the per-pair ratios B/A of the server's CPU per event
# and of the events acknowledged per second.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [SCENARIO=b] [PAIRS=12] [DURATION=2s]
#
# e.g. keep the old build first: cp target/release/recuerda /tmp/recuerda-old, change, build,
#      scripts/bench-ab.sh /tmp/recuerda-old target/release/recuerda b 16
set -euo pipefail
a=${1:?old binary}; b=${2:?new binary}; scenario=${3:-b}; pairs=${4:-12}; duration=${5:-2s}
case "$scenario" in
  a) cpu_line='CPU per callback'; rate_line='callbacks per second' ;;
  b) cpu_line='CPU per reply \(end to end\)'; rate_line='replies per second' ;;
  *) echo "scenario must be a or b (CPU per event)" >&2; exit 2 ;;
esac
# Prints "CPU_µs RATE_per_s" for one run of binary $1.
run() {
  "$1" bench --scenario "$scenario" --duration "$duration" 2>&1 | awk -v s="$scenario" -v c="$cpu_line" -v r="$rate_line" '
    $0 ~ "^  \\(" s "\\) " c { for (i = 1; i <= NF; i++) if ($i == "µs") { cpu = $(i-1); break } }
    $0 ~ "^  \\(" s "\\) " r { for (i = 1; i <= NF; i++) if ($i ~ /\/s$/) { rate = $i; sub(/\/s$/, "", rate); break } }
    END { print cpu, rate }'
}
cpu_ratios=(); rate_ratios=()
for ((p = 1; p <= pairs; p++)); do
  if ((p % 2)); then x=$(run "$a"); y=$(run "$b"); else y=$(run "$b"); x=$(run "$a"); fi
  read -r xc xr <<< "$x"; read -r yc yr <<< "$y"
  cr=$(awk -v x="$xc" -v y="$yc" 'BEGIN { printf "%.3f", y / x }')
  rr=$(awk -v x="$xr" -v y="$yr" 'BEGIN { printf "%.3f", y / x }')
  cpu_ratios+=("$cr"); rate_ratios+=("$rr")
  echo "pair $p: A $xc µs $xr/s, B $yc µs $yr/s, B/A CPU $cr, rate $rr"
done
median() {
  sort -n | awk -v what="$1" '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "median B/A %s over %d pairs: %.3f (lowest %s, highest %s)\n", what, NR, m, v[1], v[NR] }'
}
printf '%s\n' "${cpu_ratios[@]}" | median "CPU per event"
printf '%s\n' "${rate_ratios[@]}" | median "events per second"

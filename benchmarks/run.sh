#!/usr/bin/env bash
# Run the benchmark scenarios one after another and keep everything a reader of
# BENCHMARKS.md needs: the JSON of each run, the charts, the machine.
#   benchmarks/run.sh [OUT_DIR] [SCENARIO...]   (default: out/bench, single seed)
# Needs PostgreSQL and Redis (CRMSYNC_DATABASE_URL / CRMSYNC_REDIS_URL); the
# bench drops and recreates the database crmsync_bench on that server.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/bench}"
shift || true
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(single seed)
py=".venv/bin/python"
[ -x "$py" ] || py="python3"
mkdir -p "$out"
{
  echo "nproc: $(nproc)"
  grep -m1 "model name" /proc/cpuinfo || true
  grep MemTotal /proc/meminfo
  uptime
} > "$out/machine.txt"
for s in "${scenarios[@]}"; do
  echo "== crmsync bench --scenario $s" >&2
  "$py" -c "from crmsync.cli import main; main()" bench --scenario "$s" --json \
    --plot "$out/plots" --run-dir "$out/runs" > "$out/$s.json"
done
echo "results in $out" >&2

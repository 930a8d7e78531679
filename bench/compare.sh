#!/usr/bin/env bash
# Runs the same append workload against Proteus (HTTP, fdatasync before every acknowledgement),
# NATS JetStream, Redis Streams and PostgreSQL on this machine, one after the other, and prints
# one table; then Proteus in-process and the disk's own fdatasync bandwidth, the ceiling.
#
#   bench/compare.sh                       # defaults below
#   DURATION_S=30 PRODUCERS=16 bench/compare.sh
#
# Parameters (environment, identical for every target):
#   PRODUCERS=64 EVENT_BYTES=1024 BATCH_EVENTS=100 DURATION_S=10 WARMUP_S=2 PARTITIONS=1
#   DISK_TOTAL_MIB=1024    size of the disk measurement
#   BENCH_DIR=$TMPDIR      where the temporary data directories go (the disk measured)
#   PG_URL=postgres://postgres@127.0.0.1:5432/test   the machine's PostgreSQL (trust auth)
#   PROTEUS_BIN=path       use this binary instead of building target/release/proteus
#
# It starts its own `proteus serve`, `nats-server` and `redis-server` on free loopback ports
# with data in a temporary directory, and stops them and removes the directory on exit, on
# failure or on Ctrl-C. PostgreSQL is the machine's: the benchmark creates and drops its table.
set -euo pipefail

cd "$(dirname "$0")/.."

PRODUCERS=${PRODUCERS:-64}
EVENT_BYTES=${EVENT_BYTES:-1024}
BATCH_EVENTS=${BATCH_EVENTS:-100}
DURATION_S=${DURATION_S:-10}
WARMUP_S=${WARMUP_S:-2}
PARTITIONS=${PARTITIONS:-1}
DISK_TOTAL_MIB=${DISK_TOTAL_MIB:-1024}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
REDIS_SERVER=${REDIS_SERVER:-redis-server}

die() {
  echo "compare.sh: $*" >&2
  exit 1
}

for tool in python3 "$NATS_SERVER" "$REDIS_SERVER" redis-cli; do
  command -v "$tool" >/dev/null || die "$tool is not installed; install it (Debian: nats-server, redis-server, redis-tools, python3) or point ${tool##*/} at it"
done

# ---- clean-up: every process started here, and the temporary directory ----
PIDS=()
WORK=""
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Give each a moment to stop cleanly, then insist.
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -n "$WORK" ]] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until something listens on 127.0.0.1:$2, failing with $1's log if its process exits.
wait_port() {
  local name=$1 port=$2 pid=$3 log=$4
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "compare.sh: $name exited while starting; its log:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  die "$name did not listen on 127.0.0.1:$port within 10 s; see $log"
}

# ---- the binary ----
if [[ -n "${PROTEUS_BIN:-}" ]]; then
  PROTEUS=$PROTEUS_BIN
else
  echo "building proteus (release)…" >&2
  cargo build --release --quiet -p proteus
  PROTEUS=${CARGO_TARGET_DIR:-target}/release/proteus
fi
[[ -x "$PROTEUS" ]] || die "$PROTEUS is not an executable"

mkdir -p "$BENCH_DIR"
WORK=$(mktemp -d "$BENCH_DIR/proteus-compare.XXXXXX")

# ---- PostgreSQL: the machine's ----
pg_host=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 5432)' "$PG_URL")
read -r PG_HOST PG_PORT <<<"$pg_host"
if ! (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null; then
  die "PostgreSQL is not answering at $PG_HOST:$PG_PORT ($PG_URL). Start it with:
    pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
or give another PG_URL."
fi
pg_version=$(psql "$PG_URL" -Atc 'SHOW server_version' 2>/dev/null | awk '{ print $1 }' || true)
pg_data=$(psql "$PG_URL" -Atc 'SHOW data_directory' 2>/dev/null || true)

# ---- the machine ----
describe_fs() {
  df -PT "$1" 2>/dev/null | awk 'NR == 2 { print $2 " on " $1 " mounted at " $7 }'
}
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem_gib=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
echo "## Proteus and its peers on this machine"
echo
echo "- CPU: $(nproc) × ${cpu:-unknown}"
echo "- memory: $mem_gib GiB"
echo "- kernel: $(uname -sr)"
echo "- data of Proteus, NATS and Redis: $WORK, $(describe_fs "$WORK")"
if [[ -n "$pg_data" ]]; then
  echo "- data of PostgreSQL: $pg_data, $(describe_fs "$pg_data")"
fi
echo "- nats-server $("$NATS_SERVER" --version 2>&1 | awk '{ sub("^v", "", $NF); print $NF }'), redis-server $("$REDIS_SERVER" --version | awk '{ sub("v=", "", $3); print $3 }'), PostgreSQL ${pg_version:-unknown}"
echo "- workload: $PRODUCERS producers × batches of $BATCH_EVENTS events of $EVENT_BYTES bytes, flat out, $DURATION_S s measured after $WARMUP_S s warm-up, $PARTITIONS partition(s) for Proteus"
echo

# ---- our own servers ----
PROTEUS_PORT=$(free_port)
mkdir -p "$WORK/proteus"
"$PROTEUS" serve --listen "127.0.0.1:$PROTEUS_PORT" --data-dir "$WORK/proteus" --durability fsync --log-level warn \
  >"$WORK/proteus.log" 2>&1 &
PIDS+=($!)
wait_port "proteus serve" "$PROTEUS_PORT" "$!" "$WORK/proteus.log"

NATS_PORT=$(free_port)
mkdir -p "$WORK/nats"
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
wait_port "nats-server" "$NATS_PORT" "$!" "$WORK/nats.log"

REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly yes --appendfsync always \
  --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "redis-server" "$REDIS_PORT" "$!" "$WORK/redis.log"

# ---- the runs, one after the other ----
COMMON=(--producers "$PRODUCERS" --event-bytes "$EVENT_BYTES" --batch-events "$BATCH_EVENTS"
  --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --partitions "$PARTITIONS" --output json)
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
FAILED=0

# run LABEL DURABILITY -- ARGS...: one `proteus bench produce`, its JSON line kept with a label.
run() {
  local label=$1 durability=$2
  shift 3
  echo "running: $label…" >&2
  local out
  if out=$("$PROTEUS" bench produce "$@" "${COMMON[@]}" 2>"$WORK/run.err"); then
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["label"] = sys.argv[2]; r["durability"] = sys.argv[3]; print(json.dumps(r))' \
      "$(tail -1 <<<"$out")" "$label" "$durability" >>"$RESULTS"
  else
    FAILED=1
    local why
    why=$(grep -m1 '^error:' "$WORK/run.err" || tail -1 "$WORK/run.err")
    why=${why#error: }
    echo "  $label failed: $why" >&2
    python3 -c 'import json, sys; print(json.dumps({"label": sys.argv[1], "durability": sys.argv[2], "error": sys.argv[3]}))' \
      "$label" "$durability" "$why" >>"$RESULTS"
  fi
}

run "Proteus (HTTP)" "fdatasync before each ack (group commit)" -- --target "http://127.0.0.1:$PROTEUS_PORT"
run "NATS JetStream" "defaults: file storage, fsync every 2 min, not per ack" -- --target "nats://127.0.0.1:$NATS_PORT"
run "Redis Streams" "appendfsync always" -- --target "redis://127.0.0.1:$REDIS_PORT"
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config set appendfsync everysec >/dev/null
run "Redis Streams" "appendfsync everysec" -- --target "redis://127.0.0.1:$REDIS_PORT"
run "PostgreSQL" "synchronous_commit = on" -- --target "$PG_URL"
run "Proteus (in-process)" "fdatasync before each ack (group commit)" -- --target "embedded:$WORK/inprocess"

# The disk, twice: with an fdatasync after each 1 MiB, and after each round of every
# producer's batch (the most one group commit of this workload can cover).
GROUP_KIB=$(( PRODUCERS * BATCH_EVENTS * EVENT_BYTES / 1024 ))
GROUP_KIB=$(( GROUP_KIB < 4 ? 4 : GROUP_KIB > 65536 ? 65536 : GROUP_KIB ))
GROUP_KIB=$(( GROUP_KIB > DISK_TOTAL_MIB * 1024 ? DISK_TOTAL_MIB * 1024 : GROUP_KIB ))
DISK_CHUNKS_KIB=(1024)
[[ $GROUP_KIB -ne 1024 ]] && DISK_CHUNKS_KIB+=("$GROUP_KIB")
DISK_JSON=""
STALL_S=10 # the first disk run also counts the disk's own fdatasync stalls
for chunk_kib in "${DISK_CHUNKS_KIB[@]}"; do
  echo "running: disk (${DISK_TOTAL_MIB} MiB, fdatasync after each ${chunk_kib} KiB)…" >&2
  if out=$("$PROTEUS" bench disk --dir "$WORK" --total-mib "$DISK_TOTAL_MIB" --chunk-kib "$chunk_kib" --stall-s "$STALL_S" --output json 2>"$WORK/run.err"); then
    DISK_JSON+="$out"$'\n'
  else
    FAILED=1
    echo "  disk failed: $(tail -1 "$WORK/run.err")" >&2
  fi
  STALL_S=0
done

# ---- the table ----
python3 - "$RESULTS" "$DISK_JSON" <<'PY'
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
disks = [json.loads(line) for line in sys.argv[2].splitlines() if line.strip()]
nats = next((r for r in rows if r["label"] == "NATS JetStream" and "error" not in r), None)

def ratio(row):
    if nats is None or not nats["events_per_s"]:
        return "n/a"
    return f'{row["events_per_s"] / nats["events_per_s"]:.2f}×'

print("| target | durability | events/s | MB/s | p50 ms | p99 ms | ratio vs NATS JetStream |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for row in rows:
    if "error" in row:
        print(f'| {row["label"]} | {row["durability"]} | failed: {row["error"]} | | | | |')
        continue
    failed = f' ({row["failed_batches"]} failed batches)' if row["failed_batches"] else ""
    print(
        f'| {row["label"]} | {row["durability"]} | {row["events_per_s"]:,.0f}{failed} | {row["mb_per_s"]:.1f} '
        f'| {row["p50_ms"]:.2f} | {row["p99_ms"]:.2f} | {ratio(row)} |'
    )
print()
for disk in disks:
    print(
        f'Disk: {disk["sequential_mb_per_s"]:.1f} MB/s sequential with an fdatasync after each {disk["chunk_kib"]} KiB; '
        f'4 KiB write+fdatasync p50 {disk["small_write_p50_ms"]:.3f} ms, p99 {disk["small_write_p99_ms"]:.3f} ms.'
    )
    if disk["stall_writes"]:
        print(
            f'Disk stalls: of {disk["stall_writes"]:,} back-to-back 100 KiB write+fdatasync, '
            f'{disk["stall_writes_over_10_ms"]} took over 10 ms, {disk["stall_writes_over_25_ms"]} over 25 ms, '
            f'{disk["stall_writes_over_50_ms"]} over 50 ms (max {disk["stall_write_max_ms"]:.1f} ms).'
        )
if disks:
    print()
for row in rows:
    if row["label"].startswith("Proteus") and "error" not in row:
        shares = ", ".join(
            f'{100 * row["mb_per_s"] / d["sequential_mb_per_s"]:.0f}% of the disk at {d["chunk_kib"]} KiB per fdatasync'
            for d in disks
            if d["sequential_mb_per_s"]
        )
        print(f'{row["label"]}: {row["mb_per_s"]:.1f} MB/s of events' + (f": {shares}." if shares else "."))
PY

if [[ $FAILED -ne 0 ]]; then
  echo >&2
  echo "compare.sh: some runs failed (see the table)" >&2
  exit 1
fi

#!/usr/bin/env bash
# Issue 25's harness: a real one-node Slurm cluster on localhost runs a tiny sweep as a job
# array; one task is killed mid-run and requeued; the report must equal the same sweep run
# locally. Needs root (it starts munged, slurmctld and slurmd) and the packages `slurm-wlm` and
# `munge` (installed with apt when missing, with `jq`). Everything lives in a temporary directory and is
# torn down at the end, whatever happens. CI runs it (`.ci/run`); where it cannot run (not
# root, or the packages missing and no apt-get), it says so on one line and exits 0.
#
#   cargo build --release && scripts/slurm_test.sh [target/release/clsnorm]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXE=$(realpath "${1:-$ROOT/target/release/clsnorm}")
MODEL=$ROOT/models/all-MiniLM-L6-v2
[ -x "$EXE" ] || { echo "no clsnorm binary at $EXE: cargo build --release first" >&2; exit 1; }
[ -f "$MODEL/model.safetensors" ] || { echo "$MODEL missing: run scripts/setup.sh" >&2; exit 1; }
skip() { echo "slurm_test: SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root to start munged, slurmctld and slurmd"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v jq >/dev/null; then
    command -v apt-get >/dev/null || skip "slurm-wlm, munge or jq missing, and no apt-get to install them"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge jq >/dev/null
fi

T=$(mktemp -d /tmp/clsnorm-slurm.XXXXXX)
export SLURM_CONF=$T/slurm.conf
teardown() {
    scancel --quiet --full --user root 2>/dev/null || true
    for pid in "$T"/slurmd.pid "$T"/slurmctld.pid "$T"/munged.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    sleep 1
    rm -rf "$T"
}
trap teardown EXIT
t0=$(date +%s)
log() { echo "[$(($(date +%s) - t0)) s] $*"; }

# --- the cluster -------------------------------------------------------------------------
mkdir -p "$T"/{spool,state,log}
head -c 1024 /dev/urandom > "$T/munge.key" && chmod 400 "$T/munge.key"
munged --key-file="$T/munge.key" --socket="$T/munge.sock" --pid-file="$T/munged.pid" \
    --log-file="$T/log/munged.log" --seed-file="$T/munge.seed" -f
H=$(hostname)
cat > "$SLURM_CONF" <<EOF
ClusterName=clsnorm-test
SlurmctldHost=$H
AuthType=auth/munge
AuthInfo=socket=$T/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
KillWait=30
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
MpiDefault=none
NodeName=$H CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -c
slurmd
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && break
    sleep 1
done
sinfo -h -o %T | grep -q idle || { echo "the node did not come up" >&2; tail "$T"/log/*; exit 1; }
log "one-node Slurm cluster up on $H ($(nproc) CPUs)"

# --- a tiny sweep: 2 tasks x 2 normalizers x 2 seeds ----------------------------------------
words=(the a cat dog movie film was very it on mat plot)
mk() { # rows seed -> "sentence<TAB>label" lines, label 1 iff "good"
    local n=$1 s=$2 i
    RANDOM=$s
    for ((i = 0; i < n; i++)); do
        local w=(${words[RANDOM % 12]} ${words[RANDOM % 12]} ${words[RANDOM % 12]})
        if ((i % 2)); then w+=(good); else w+=(bad); fi
        printf '%s %s %s %s\t%d\n' "${w[@]}" $((i % 2))
    done
}
mkdir -p "$T/glue/SST-2" "$T/glue/RTE"
{ printf 'sentence\tlabel\n'; mk 120 1; } > "$T/glue/SST-2/train.tsv"
{ printf 'sentence\tlabel\n'; mk 24 2; } > "$T/glue/SST-2/dev.tsv"
rte() { awk -F'\t' 'BEGIN{OFS="\t"; print "index","sentence1","sentence2","label"}
    {print NR-1, $1, "it is " ($2 ? "good" : "bad"), ($2 ? "entailment" : "not_entailment")}'; }
mk 120 3 | rte > "$T/glue/RTE/train.tsv"
mk 24 4 | rte > "$T/glue/RTE/dev.tsv"
export GLUE_DIR=$T/glue
sweep_file() { # name output
    cat <<EOF
name = "$1"
output = "$2"
model = "$MODEL"
tasks = ["SST-2", "RTE"]
seeds = [1, 2]
[[norm]]
name = "none"
[[norm]]
name = "isobn"
[args]
epochs = 2
batch-size = 8
max-len = 32
save-every = 5
EOF
}
sweep_file tiny "$T/slurm-sweep" > "$T/slurm.toml"
sweep_file tiny "$T/local-sweep" > "$T/local.toml"

# --- submit, kill one task mid-run, requeue it ---------------------------------------------
ids=$("$EXE" sweep --config "$T/slurm.toml" --slurm --slurm-concurrent 2 --slurm-cpus 1 \
    2>"$T/submit.log") || { cat "$T/submit.log" >&2; exit 1; }
ARRAY=$(sed -n 1p <<<"$ids")
REPORT=$(sed -n 2p <<<"$ids")
log "submitted array job $ARRAY (8 tasks, 2 at a time) and report job $REPORT after it"
victim=""
for _ in $(seq 600); do
    # A running task whose run has written a mid-epoch checkpoint.
    for id in $(squeue -h -j "$ARRAY" -t R -o %i 2>/dev/null); do
        task=${id#*_}
        run=$(jq -r ".runs[$task].dir" "$T/slurm-sweep/sweep.json")
        if [ -f "$T/slurm-sweep/$run/last/manifest.json" ]; then
            victim=$id
            break 2
        fi
    done
    sleep 0.2
done
[ -n "$victim" ] || { echo "no task to kill was seen running" >&2; exit 1; }
scontrol requeue "$victim"
log "requeued task $victim while it ran ($run): SIGTERM, then it starts again"
for _ in $(seq 900); do
    squeue -h -j "$ARRAY,$REPORT" 2>/dev/null | grep -q . || break
    sleep 1
done
squeue -h -j "$ARRAY,$REPORT" 2>/dev/null | grep -q . && { echo "jobs still queued" >&2; exit 1; }
log "array and report jobs done"
report_out=$(ls "$T"/slurm-sweep/slurm/report-*.out)
grep -q "runs finished" "$report_out" || { cat "$report_out" >&2; exit 1; }
grep -h "resuming from" "$T/slurm-sweep/logs/$run.log" >/dev/null ||
    { echo "the requeued run did not resume from its checkpoint" >&2; cat "$T/slurm-sweep/logs/$run.log" >&2; exit 1; }
log "the requeued run resumed from its checkpoint: $(grep -h 'resuming from' "$T/slurm-sweep/logs/$run.log" | head -1 | sed 's/.*INFO //')"

# --- the same sweep locally; the reports must agree ----------------------------------------
"$EXE" sweep --config "$T/local.toml" --threads 1 2>"$T/local.log"
"$EXE" report "$T/local-sweep" >/dev/null 2>&1
log "local sweep done"
# Run by run, every epoch's training loss and dev metric, and the final weights, bit for bit
# (the requeued run included: exact resume).
for run in $(jq -r '.runs[].dir' "$T/slurm-sweep/sweep.json"); do
    a=$(jq -c '[.epoch, .train_loss, .primary]' "$T/slurm-sweep/$run/metrics.jsonl")
    b=$(jq -c '[.epoch, .train_loss, .primary]' "$T/local-sweep/$run/metrics.jsonl")
    [ "$a" = "$b" ] || { echo "FAIL: $run: $a vs $b" >&2; exit 1; }
    cmp -s "$T/slurm-sweep/$run/last/model.safetensors" "$T/local-sweep/$run/last/model.safetensors" ||
        { echo "FAIL: $run: final weights differ" >&2; exit 1; }
done
log "every run's losses, dev metrics and final weights equal the local sweep's"
if ! cmp -s "$T/slurm-sweep/results.csv" "$T/local-sweep/results.csv"; then
    diff "$T/slurm-sweep/results.csv" "$T/local-sweep/results.csv" >&2
    echo "FAIL: the Slurm sweep's report differs from the local one" >&2
    exit 1
fi
cat "$T/slurm-sweep/results.csv"
log "PASS: the Slurm sweep (one task killed and requeued mid-run) reports exactly what the local sweep does"

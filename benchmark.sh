#!/usr/bin/env bash
# The benchmark: every training script x its envs x seeds (x GRPO group sizes) (x a grid of any arguments),
# locally with xargs -P or on Slurm as one array job, then plot.py. `bash benchmark.sh --help` for the options.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ALL_SCRIPTS="ppo_continuous ppo_beta_continuous grpo_continuous ppo_cnn_carracing grpo_cnn_carracing"
SET_BY_BENCHMARK="--env-id --seed --total-timesteps --group-size --exp-name --runs-dir --resume --no-resume --config"

usage() {
    cat <<'EOF'
usage: bash benchmark.sh [OPTIONS] [-- EXTRA_ARGS...]

Runs every selected training script x env x seed (x GRPO group size) (x grid point), each as
  OMP_NUM_THREADS=1 PYTHON SCRIPT.py --env-id ENV --seed S [--total-timesteps N] [--group-size G]
      [GRID FLAGS --exp-name NAME] [--config FILE] --runs-dir RUNS --resume EXTRA_ARGS >> RUNS/_benchmark/logs/RUN.log 2>&1
locally (xargs -P WORKERS) or as one Slurm array job, prints a summary, then runs plot.py RUNS.
Re-running continues: incomplete runs resume from their checkpoint, completed ones are skipped.
Lists take spaces or commas. Every option also reads the environment variable shown.

  --scripts LIST        training scripts (stems or file names)  [BENCH_SCRIPTS; default: every one of
                        ppo_continuous ppo_beta_continuous grpo_continuous ppo_cnn_carracing
                        grpo_cnn_carracing that exists]
  --envs LIST           envs of the MLP scripts  [BENCH_ENVS; default: Hopper-v4 HalfCheetah-v4 Walker2d-v4]
  --cnn-envs LIST       envs of the *_cnn_* scripts  [BENCH_CNN_ENVS; default: CarRacing-v3]
  --seeds LIST          seeds  [BENCH_SEEDS; default: 1 2 3]
  --group-sizes LIST    GRPO group sizes, each >= 2  [BENCH_GROUP_SIZES; default: 4 8 16]
  --total-timesteps N   env steps per run  [BENCH_TOTAL_TIMESTEPS; default: each script's own]
  --grid KEY=V1,V2,...  run every value of the scripts' argument KEY (an Args field, e.g. learning_rate); several
                        --grid run their cross product. Each run's exp name gets _KEY=VALUE for each, so plot.py
                        --sweep KEY draws it. A list value keeps its brackets: hidden_sizes=[64,64],[256,256]
                        [BENCH_GRID, space-separated KEY=V1,V2 entries]
  --config FILE         every run reads this YAML, TOML or JSON file first (--config of the scripts); the flags
                        above and the extra args win over it  [BENCH_CONFIG]
  --workers N           runs at once (Slurm: array tasks at once)  [BENCH_WORKERS; default: nproc]
  --runs-dir DIR        where runs, logs and plots go  [BENCH_RUNS_DIR; default: runs]
  --extra-args STRING   more flags for every run, split on spaces; `-- ARGS...` appends more, quoted
                        as given. In them {env}, {seed} and {runs} become each run's env, seed and the
                        runs dir: a stage from an earlier one's checkpoints is
                        -- --init-from '{runs}/{env}__ppo_continuous_300k__seed{seed}/checkpoints/latest.pt'
                        [BENCH_EXTRA_ARGS]
  --exp-suffix SUFFIX   appended to every run's exp name (letters, digits, _ . -), to keep a stage's
                        runs apart from others in one runs dir, e.g. _300k  [BENCH_EXP_SUFFIX]
  --python PATH         the python that runs the scripts  [BENCH_PYTHON; default: $VIRTUAL_ENV's, else
                        this repo's .venv's, else python3]
  --dry-run             print the commands, one per line; run and write nothing  [BENCH_DRY_RUN=1]
  --skip-plots          do not run plot.py at the end  [BENCH_SKIP_PLOTS=1]
  --slurm               submit the same commands as one `sbatch --array=1-N%WORKERS` job  [BENCH_SLURM=1]
  --wait                with --slurm: wait for the array job, then summary and plots as locally;
                        without it a dependent job runs plot.py  [BENCH_SLURM_WAIT=1]
  --partition NAME      sbatch --partition  [BENCH_SLURM_PARTITION]
  --time LIMIT          sbatch --time per run, e.g. 12:00:00  [BENCH_SLURM_TIME]
  --cpus N              sbatch --cpus-per-task  [BENCH_SLURM_CPUS; default: 1]
  --gpus N              sbatch --gres=gpu:N per run (0: none)  [BENCH_SLURM_GPUS; default: 0]
  --sbatch-args STRING  more sbatch options, split on spaces  [BENCH_SBATCH_ARGS]
  --poll SECONDS        with --wait: seconds between squeue polls  [BENCH_SLURM_POLL; default: 10]
  --signal SECONDS      Slurm sends SIGUSR1 this long before a task's time limit (sbatch
                        --signal=B:USR1@SECONDS; 0: none): the run saves its last whole iteration and
                        the task requeues itself to resume  [BENCH_SLURM_SIGNAL; default: 300]
  -h, --help            this text

Writes RUNS/<env>__<exp_name>__seed<S>/ (by the scripts), RUNS/_benchmark/logs/<run>.log (each run's
output, appended), RUNS/_benchmark/<time>-<pid>/ (commands.txt, exit statuses, Slurm output) and
RUNS/_plots/ (plot.py). Exit status: 0 all done or skipped, 1 a run or plot.py failed, 2 bad input.
(Internal: `bash benchmark.sh --run-line STATE_DIR I` runs line I of STATE_DIR/commands.txt.)
EOF
}

die() { echo "error: $*" >&2; exit 2; }

# Runs line $2 of $1/commands.txt and records its exit status: what each local worker and each
# Slurm array task does, so both run the very same lines.
run_line() {
    local state=$1 i=$2 line rc pid signalled forwarded=
    line=$(sed -n "${i}p" "$state/commands.txt")
    [[ -n $line ]] || { echo "error: no line $i in $state/commands.txt" >&2; exit 2; }
    # The run in the background, this shell waiting: Slurm's --signal=B:USR1 comes to this shell alone and is passed
    # on to the run; a preemption's or time limit's SIGTERM comes to every process, which the shells outlive.
    bash -c "trap : TERM USR1; $line" &
    pid=$!
    trap 'signalled=1; forwarded=1; pkill -USR1 -P "$pid"' USR1
    trap 'signalled=1' TERM
    while signalled=; wait "$pid"; rc=$?; [[ -n $signalled ]] && ((rc > 128)); do :; done  # a trap cuts `wait` short
    echo "$rc" > "$state/rc/$i.tmp" && mv "$state/rc/$i.tmp" "$state/rc/$i"
    # Stopped by a signal, resumable: back in the queue. So is a run that the USR1 passed on killed (exit 138) before
    # it could catch it, while it was starting: it had nothing unsaved.
    if { ((rc == 75)) || { [[ -n $forwarded ]] && ((rc == 138)); }; } && [[ -n ${SLURM_JOB_ID:-} ]]; then
        scontrol requeue "$SLURM_JOB_ID" && echo "requeued Slurm job $SLURM_JOB_ID: the run resumes when it starts again"
    fi
    exit $((rc == 255 ? 1 : rc))  # 255 would stop xargs
}
if [[ ${1:-} == --run-line ]]; then
    [[ $# -eq 3 ]] || die "--run-line takes STATE_DIR INDEX"
    run_line "$2" "$3"
fi

SCRIPTS=${BENCH_SCRIPTS:-}
ENVS=${BENCH_ENVS:-Hopper-v4 HalfCheetah-v4 Walker2d-v4}
CNN_ENVS=${BENCH_CNN_ENVS:-CarRacing-v3}
SEEDS=${BENCH_SEEDS:-1 2 3}
GROUP_SIZES=${BENCH_GROUP_SIZES:-4 8 16}
TOTAL_TIMESTEPS=${BENCH_TOTAL_TIMESTEPS:-}
read -r -a GRIDS <<< "${BENCH_GRID:-}"
CONFIG=${BENCH_CONFIG:-}
WORKERS=${BENCH_WORKERS:-$(nproc)}
RUNS_DIR=${BENCH_RUNS_DIR:-runs}
EXTRA_STRING=${BENCH_EXTRA_ARGS:-}
EXP_SUFFIX=${BENCH_EXP_SUFFIX:-}
PYTHON=${BENCH_PYTHON:-}
DRY_RUN=${BENCH_DRY_RUN:-0}
SKIP_PLOTS=${BENCH_SKIP_PLOTS:-0}
SLURM=${BENCH_SLURM:-0}
SLURM_WAIT=${BENCH_SLURM_WAIT:-0}
PARTITION=${BENCH_SLURM_PARTITION:-}
TIME_LIMIT=${BENCH_SLURM_TIME:-}
CPUS=${BENCH_SLURM_CPUS:-1}
GPUS=${BENCH_SLURM_GPUS:-0}
SBATCH_STRING=${BENCH_SBATCH_ARGS:-}
POLL=${BENCH_SLURM_POLL:-10}
SIGNAL=${BENCH_SLURM_SIGNAL:-300}
EXTRA_QUOTED=()

while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --skip-plots) SKIP_PLOTS=1 ;;
        --slurm) SLURM=1 ;;
        --wait) SLURM_WAIT=1 ;;
        --) shift; EXTRA_QUOTED=("$@"); break ;;
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
        --scripts | --envs | --cnn-envs | --seeds | --group-sizes | --total-timesteps | --workers | --runs-dir | \
        --extra-args | --exp-suffix | --python | --partition | --time | --cpus | --gpus | --sbatch-args | --poll | --signal | \
        --grid | --config)
            (($# >= 2)) || die "$1 needs a value (see bash benchmark.sh --help)"
            case $1 in
                --scripts) SCRIPTS=$2 ;; --envs) ENVS=$2 ;; --cnn-envs) CNN_ENVS=$2 ;; --seeds) SEEDS=$2 ;;
                --group-sizes) GROUP_SIZES=$2 ;; --total-timesteps) TOTAL_TIMESTEPS=$2 ;; --workers) WORKERS=$2 ;;
                --runs-dir) RUNS_DIR=$2 ;; --extra-args) EXTRA_STRING=$2 ;; --exp-suffix) EXP_SUFFIX=$2 ;;
                --python) PYTHON=$2 ;;
                --partition) PARTITION=$2 ;; --time) TIME_LIMIT=$2 ;; --cpus) CPUS=$2 ;; --gpus) GPUS=$2 ;;
                --sbatch-args) SBATCH_STRING=$2 ;; --poll) POLL=$2 ;; --signal) SIGNAL=$2 ;;
                --grid) GRIDS+=("$2") ;; --config) CONFIG=$2 ;;
            esac
            shift ;;
        *) die "unknown argument '$1' (see bash benchmark.sh --help; flags for the scripts go after --)" ;;
    esac
    shift
done

# ---- check everything before anything is written ----
words() { echo "${1//,/ }"; }  # a list given with commas or spaces
check_int() {  # check_int NAME VALUE MIN
    [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3)) || die "$1 must be an integer >= $3, got '$2'"
}
for flag in DRY_RUN SKIP_PLOTS SLURM SLURM_WAIT; do
    [[ ${!flag} == [01] ]] || die "BENCH_$flag must be 0 or 1, got '${!flag}'"
done

if [[ -z ${SCRIPTS// /} ]]; then
    for s in $ALL_SCRIPTS; do [[ -f $ROOT/$s.py ]] && SCRIPTS+=" $s"; done
    [[ -n $SCRIPTS ]] || die "no training script found in $ROOT"
fi
SCRIPT_LIST=()
for s in $(words "$SCRIPTS"); do
    s=${s%.py}
    [[ " $ALL_SCRIPTS " == *" $s "* ]] || die "unknown script '$s' (choose from: $ALL_SCRIPTS)"
    [[ -f $ROOT/$s.py ]] || die "script $s.py is not in $ROOT (drop it from --scripts)"
    SCRIPT_LIST+=("$s")
done
((${#SCRIPT_LIST[@]})) || die "--scripts is empty"
for s in $(words "$SEEDS"); do check_int "--seeds entry" "$s" 0; done
[[ -n $(words "$SEEDS" | tr -d ' ') ]] || die "--seeds is empty (give e.g. --seeds 1,2,3)"
for g in $(words "$GROUP_SIZES"); do check_int "--group-sizes entry" "$g" 2; done
[[ " ${SCRIPT_LIST[*]}" != *" grpo_"* || -n $(words "$GROUP_SIZES" | tr -d ' ') ]] || die "--group-sizes is empty (give e.g. --group-sizes 4,8,16)"
[[ -z $TOTAL_TIMESTEPS ]] || check_int --total-timesteps "$TOTAL_TIMESTEPS" 1
check_int --workers "$WORKERS" 1
check_int --cpus "$CPUS" 1
check_int --gpus "$GPUS" 0
check_int --poll "$POLL" 1
check_int --signal "$SIGNAL" 0
((SLURM || !SLURM_WAIT)) || die "--wait goes with --slurm (local runs always wait)"
[[ -n $RUNS_DIR ]] || die "--runs-dir is empty"
[[ $EXP_SUFFIX =~ ^[A-Za-z0-9_.-]*$ ]] || die "--exp-suffix may hold letters, digits, _ . and - only, got '$EXP_SUFFIX'"
[[ ! -e $RUNS_DIR || -d $RUNS_DIR ]] || die "--runs-dir $RUNS_DIR is not a directory (pass another --runs-dir)"
read -r -a EXTRA <<< "$EXTRA_STRING"
EXTRA+=("${EXTRA_QUOTED[@]}")
for a in "${EXTRA[@]}"; do
    [[ " $SET_BY_BENCHMARK " == *" ${a%%=*} "* ]] && die "$a is set by benchmark.sh; use its own flags (see --help) instead of passing it through"
done
read -r -a SBATCH_EXTRA <<< "$SBATCH_STRING"
for spec in "${GRIDS[@]}"; do
    key=${spec%%=*}
    for a in "${EXTRA[@]}"; do
        [[ ${a%%=*} == "--${key//_/-}" ]] && die "--grid $key and the extra argument $a both set it: keep one"
    done
done
if [[ -n $CONFIG ]]; then
    [[ -f $CONFIG && -r $CONFIG ]] || die "--config $CONFIG is not a readable file"
    CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")  # absolute: the runs start elsewhere
fi

if [[ -z $PYTHON ]]; then
    if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then PYTHON=$VIRTUAL_ENV/bin/python
    elif [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python
    else PYTHON=python3
    fi
fi
if [[ $PYTHON == */* ]]; then  # absolute, but not resolved: a venv's python is a symlink
    [[ -x $PYTHON && ! -d $PYTHON ]] || die "--python $PYTHON is not an executable"
    PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
else
    PYTHON=$(command -v "$PYTHON") || die "--python $PYTHON is not on PATH"
fi
if ((SLURM && !DRY_RUN)); then
    command -v sbatch > /dev/null || die "sbatch not found: run on a Slurm login node, or drop --slurm to run here"
fi

# the grid's points, each "NAME_SUFFIX<TAB>FLAG<TAB>FLAG...", checked by config.py against every script's Args
GRID_POINTS=("")
if ((${#GRIDS[@]})); then
    points=$("$PYTHON" "$ROOT/config.py" grid "${SCRIPT_LIST[@]/%/.py}" -- "${GRIDS[@]}") || exit 2
    mapfile -t GRID_POINTS <<< "$points"
fi

RUNS=${RUNS_DIR%/}
[[ $RUNS == /* ]] || RUNS=$PWD/${RUNS#./}  # absolute, so every line runs the same from anywhere
LOGS=$RUNS/_benchmark/logs

# ---- the command list, built once ----
COMMANDS=() NAMES=()
declare -A SEEN
for script in "${SCRIPT_LIST[@]}"; do
    envs=$ENVS sizes=-
    [[ $script == *_cnn_* ]] && envs=$CNN_ENVS
    [[ $script == grpo_* ]] && sizes=$(words "$GROUP_SIZES")
    for env in $(words "$envs"); do
        for g in $sizes; do
            for point in "${GRID_POINTS[@]}"; do
                IFS=$'\t' read -r -a grid <<< "$point"
                for seed in $(words "$SEEDS"); do
                    cmd=(OMP_NUM_THREADS=1 "$PYTHON" "$ROOT/$script.py" --env-id "$env" --seed "$seed")
                    [[ -n $TOTAL_TIMESTEPS ]] && cmd+=(--total-timesteps "$TOTAL_TIMESTEPS")
                    exp=$script
                    [[ $g != - ]] && cmd+=(--group-size "$g") && exp=${script}_g$g
                    exp+=${grid[0]:-}$EXP_SUFFIX
                    cmd+=("${grid[@]:1}")
                    [[ $exp != "$script" && $exp != "${script}_g$g" ]] && cmd+=(--exp-name "$exp")
                    [[ -n $CONFIG ]] && cmd+=(--config "$CONFIG")
                    cmd+=(--runs-dir "$RUNS" --resume)
                    for a in "${EXTRA[@]}"; do  # the placeholders of --extra-args
                        a=${a//\{env\}/$env} a=${a//\{seed\}/$seed}
                        cmd+=("${a//\{runs\}/$RUNS}")
                    done
                    name=${env//\//-}__${exp}__seed$seed
                    [[ -z ${SEEN[$name]:-} ]] || die "run $name is listed twice (a repeat in --scripts, --envs, --seeds, --group-sizes or a --grid)"
                    SEEN[$name]=1
                    NAMES+=("$name")
                    COMMANDS+=("$(printf '%q ' "${cmd[@]}")>> $(printf %q "$LOGS/$name.log") 2>&1")
                done
            done
        done
    done
done
((${#COMMANDS[@]})) || die "no runs: --envs/--cnn-envs is empty for the selected scripts"
N=${#COMMANDS[@]}
q() { printf %q "$1"; }
sbatch_command() {  # the sbatch call for the array job, in $SBATCH
    # --requeue: a preempted task, or one stopped by --signal, runs again and resumes; --open-mode: its output appends
    SBATCH=(sbatch --parsable --job-name=benchmark "--array=1-$N%$WORKERS" "--output=$STATE/slurm-%A_%a.out"
        "--cpus-per-task=$CPUS" --requeue --open-mode=append)
    ((SIGNAL > 0)) && SBATCH+=("--signal=B:USR1@$SIGNAL")
    [[ -n $PARTITION ]] && SBATCH+=("--partition=$PARTITION")
    [[ -n $TIME_LIMIT ]] && SBATCH+=("--time=$TIME_LIMIT")
    ((GPUS > 0)) && SBATCH+=("--gres=gpu:$GPUS")
    SBATCH+=("${SBATCH_EXTRA[@]}" --wrap "exec bash $(q "$ROOT/benchmark.sh") --run-line $(q "$STATE") \"\$SLURM_ARRAY_TASK_ID\"")
}

if ((DRY_RUN)); then
    printf '%s\n' "${COMMANDS[@]}"
    if ((SLURM)); then
        STATE=$RUNS/_benchmark/TIME-PID
        sbatch_command
        echo "# --slurm submits them as: ${SBATCH[*]:0:${#SBATCH[@]}-1} '${SBATCH[-1]}'" >&2
    fi
    exit 0
fi

STATE=$RUNS/_benchmark/$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$STATE/rc" "$LOGS" || die "cannot create $STATE (check --runs-dir)"
printf '%s\n' "${COMMANDS[@]}" > "$STATE/commands.txt.tmp" && mv "$STATE/commands.txt.tmp" "$STATE/commands.txt"

plot() {
    ((SKIP_PLOTS)) && return 0
    echo "plotting: $PYTHON $ROOT/plot.py $RUNS"
    "$PYTHON" "$ROOT/plot.py" "$RUNS" ${TOTAL_TIMESTEPS:+--total-steps "$TOTAL_TIMESTEPS"} || { echo "plot.py failed" >&2; return 1; }
}

summary() {
    local i rc status done=0 skipped=0 failed=0
    echo "---- summary: $N runs ----"
    for ((i = 1; i <= N; i++)); do
        local log=$LOGS/${NAMES[i - 1]}.log
        rc=$(cat "$STATE/rc/$i" 2>/dev/null)
        if [[ $rc == 0 ]] && tail -n 1 "$log" 2>/dev/null | grep -q "already complete"; then status=skipped; ((skipped++))
        elif [[ $rc == 0 ]]; then status=done; ((done++))
        elif [[ $rc == 75 ]]; then status="interrupted (exit 75: a signal stopped it; re-run to resume)"; ((failed++))
        elif [[ -n $rc ]]; then status="failed (exit $rc)"; ((failed++))
        else status="failed (no exit status: killed or never started)"; ((failed++))
        fi
        printf '%-8s %s  log: %s\n' "$status" "${NAMES[i - 1]}" "$log"
    done
    echo "done $done, skipped $skipped (already complete), failed $failed"
    ((failed == 0))
}

if ((SLURM)); then
    sbatch_command
    job=$("${SBATCH[@]}") || { echo "error: sbatch failed: $(printf '%q ' "${SBATCH[@]}")" >&2; exit 1; }
    job=${job%%;*}
    echo "submitted Slurm array job $job: $N runs, at most $WORKERS at once; commands in $STATE/commands.txt, logs in $LOGS"
    if ((!SLURM_WAIT)); then
        if ((!SKIP_PLOTS)); then
            plots=$(sbatch --parsable --job-name=benchmark-plots "--dependency=afterany:$job" "--output=$STATE/plots-%j.out" \
                ${PARTITION:+"--partition=$PARTITION"} "${SBATCH_EXTRA[@]}" \
                --wrap "$(q "$PYTHON") $(q "$ROOT/plot.py") $(q "$RUNS")${TOTAL_TIMESTEPS:+ --total-steps $TOTAL_TIMESTEPS}") \
                || { echo "error: sbatch of the plot job failed" >&2; exit 1; }
            echo "plot.py runs as job ${plots%%;*} once the array job has ended (output: $STATE/plots-${plots%%;*}.out)"
        fi
        echo "follow with: squeue -j $job; re-run this command to continue unfinished runs"
        exit 0
    fi
    while true; do  # the array job is over when squeue no longer lists it
        out=$(squeue -h -j "$job" -o %i 2>&1) && [[ -z $out ]] && break
        [[ $out == *"Invalid job id"* ]] && break
        sleep "$POLL"
    done
else
    echo "running $N runs, $WORKERS at a time; commands in $STATE/commands.txt, logs in $LOGS"
    seq 1 "$N" | xargs -P "$WORKERS" -I{} bash "$ROOT/benchmark.sh" --run-line "$STATE" {}
fi
summary
ok=$?
plot || ok=1
((ok == 0))

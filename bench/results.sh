#!/usr/bin/env bash
# Re-runs the SST-2 tables of docs/RESULTS.md from the repository and writes them there (between
# generated markers, one block per table and budget) with a CSV beside them in docs/results/.
#
#   bash bench/results.sh TABLE...
#     TABLE: methods  each method of $METHODS at its learning rate (LR_<method>, defaults below),
#                     every seed of $SEEDS: accuracy median and min-max, F1, MCC, trainable
#                     parameters (count and %), wall time, train tokens/s, peak RSS
#            sweep    each method of $METHODS at each rate of SWEEP_<method> (3 values by
#                     default), first seed of $SEEDS only: the rate the methods table uses
#            rank     LoRA on query,value at every rank of $RANKS (alpha 16 fixed, as the LoRA
#                     paper's rank study keeps it), every seed of $SEEDS (r 8: the methods
#                     table's lora runs)
#            adalora  the AdaLoRA settings study (init r 12 -> target 8 unless named): each
#                     variant of $ADA_VARIANTS at each rate of $ADA_LRS, every seed of $SEEDS.
#                     ada-peft: PEFT's AdaLoraConfig defaults (tinit 0, tfinal 0, deltaT 1, orth
#                     0.5; the CLI's defaults before 2026-12-02); ada-paper: the AdaLoRA paper's
#                     SST-2 schedule as fractions of the run (tinit 12%, tfinal 44%, deltaT
#                     max(1, T/500)) with orth 0.1; ada-paper-orth05: that schedule with orth 0.5;
#                     ada-peft-orth01: PEFT's schedule with orth 0.1; ada-fixed8: init r 8 =
#                     target 8 (no pruning), orth 0.1; ada-cli: the CLI's current defaults
# Methods: full (every weight), head (classifier only), lora (r 8, alpha 16, query,value +
#   classifier), lora-all (r 8 on every linear layer), rslora, pissa, dora, adalora (init r 12 ->
#   target 8: the same final trainable budget as lora, the CLI's schedule defaults).
#   qlora: lora on the base quantized to NF4 with double quantization on load (--quantize nf4-dq).
# Env: STEPS (optimizer steps per run, default 300; "epoch": one full pass, --epochs 1),
#   BATCH (32), SEEDS ("42 43 44"), METHODS ("full head lora lora-all rslora pissa dora adalora qlora"),
#   RANKS ("1 2 4 8 16 64"), LR_<method> (e.g. LR_dora=2e-3; '-' in names becomes '_'),
#   SWEEP_<method> ("a b c"), ADA_VARIANTS ("ada-peft ada-paper ada-paper-orth05 ada-peft-orth01
#   ada-fixed8"), ADA_LRS ("3e-3"), THREADS (--threads per run, 1), JOBS (runs side by side, 2),
#   NICE (19), EVAL_EVERY (0: evaluate at the end only), LORAFIT (build/lorafit),
#   OUT (runs/results), DOC (docs/RESULTS.md), NO_DOC=1 (only the CSVs and tables on stdout),
#   MODEL / TRAIN / DEV (another model folder or .tsv files, e.g. for a quick check of the script),
#   RUN=0 (start no run: write the tables from the runs that have finished).
# A run whose folder already holds result.txt is not repeated (delete it to redo it), so the
# script can be stopped and re-started, and tables can grow seed by seed. The tables also keep the
# rows of their CSV in docs/results/ (runs of an earlier session, whose folders are gone) unless a
# finished run folder of the same name, rate and seed replaces them.
# Wall time and tokens/s depend on what else the machine runs; the accuracies do not (training is
# deterministic for a given seed and thread count).
set -euo pipefail
cd "$(dirname "$0")/.."
TABLES=("$@")
[ ${#TABLES[@]} -eq 0 ] && { sed -n '2,/^set -e/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2; }
STEPS=${STEPS:-300}
BATCH=${BATCH:-32}
SEEDS=${SEEDS:-42 43 44}
METHODS=${METHODS:-full head lora lora-all rslora pissa dora adalora qlora}
RANKS=${RANKS:-1 2 4 8 16 64}
THREADS=${THREADS:-1}
JOBS=${JOBS:-2}
NICE=${NICE:-19}
EVAL_EVERY=${EVAL_EVERY:-0}
LORAFIT=${LORAFIT:-build/lorafit}
OUT=${OUT:-runs/results}
DOC=${DOC:-docs/RESULTS.md}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
TRAIN=${TRAIN:-data/sst2/train.tsv}
DEV=${DEV:-data/sst2/dev.tsv}
[ -x "$LORAFIT" ] || { echo "results.sh: $LORAFIT not found (cmake --build build)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "results.sh: needs GNU time (/usr/bin/time, apt-get install time)" >&2; exit 1; }
for f in "$MODEL/config.json" "$TRAIN" "$DEV"; do
  [ -e "$f" ] || { echo "results.sh: $f missing (tools/fetch_models.sh, tools/fetch_data.sh)" >&2; exit 1; }
done
ADA_VARIANTS=${ADA_VARIANTS:-ada-peft ada-paper ada-paper-orth05 ada-peft-orth01 ada-fixed8}
ADA_LRS=${ADA_LRS:-3e-3}
if [ "$STEPS" = epoch ]; then
  BUDGET_FLAGS="--epochs 1"; TAG="sst2-epoch-b$BATCH"
  T=$(( ($(tail -n +2 "$TRAIN" | wc -l) + BATCH - 1) / BATCH ))  # optimizer steps of the epoch
else BUDGET_FLAGS="--max-steps $STEPS"; TAG="sst2-${STEPS}x$BATCH"; T=$STEPS; fi

# method -> lorafit flags and default learning rate
method_flags() {
  case $1 in
    full) echo "--method full" ;;
    head) echo "--method head" ;;
    lora) echo "" ;;
    lora-all) echo "--target-modules all-linear" ;;
    rslora) echo "--use-rslora" ;;
    pissa) echo "--init-lora-weights pissa" ;;
    dora) echo "--use-dora" ;;
    qlora) echo "--quantize nf4-dq" ;;
    adalora | ada-cli) echo "--method adalora" ;;
    ada-peft) echo "--method adalora --tinit 0 --tfinal 0 --delta-t 1 --orth-reg-weight 0.5" ;;
    ada-peft-orth01) echo "--method adalora --tinit 0 --tfinal 0 --delta-t 1 --orth-reg-weight 0.1" ;;
    ada-paper | ada-paper-orth05)
      local dt=$((T / 500)); [ "$dt" -lt 1 ] && dt=1
      local orth=0.1; [ "$1" = ada-paper-orth05 ] && orth=0.5
      echo "--method adalora --tinit $((T * 12 / 100)) --tfinal $((T * 44 / 100)) --delta-t $dt --orth-reg-weight $orth" ;;
    ada-fixed8) echo "--method adalora --init-r 8 --target-r 8 --orth-reg-weight 0.1" ;;
    lora-r*) echo "--lora-r ${1#lora-r}" ;;
    *) echo "results.sh: unknown method '$1'" >&2; return 1 ;;
  esac
}
default_lr() {
  local v="LR_${1//-/_}"
  if [ -n "${!v:-}" ]; then echo "${!v}"; return; fi
  case $1 in full) echo 5e-5 ;; *) echo 3e-3 ;; esac
}
default_sweep() {
  local v="SWEEP_${1//-/_}"
  if [ -n "${!v:-}" ]; then echo "${!v}"; return; fi
  case $1 in full) echo "2e-5 5e-5 1e-4" ;; head) echo "1e-3 3e-3 1e-2" ;;
    adalora) echo "3e-3 5e-3 1e-2" ;; *) echo "1e-3 3e-3 5e-3" ;; esac
}

# one run: TABLE NAME METHOD LR SEED -> $OUT/$TAG/TABLE/NAME-lrLR-sSEED/result.txt (key=value)
run_one() {
  local table=$1 name=$2 method=$3 lr=$4 seed=$5
  local dir="$OUT/$TAG/$table/$name-lr$lr-s$seed"
  [ -f "$dir/result.txt" ] && return 0
  mkdir -p "$dir"
  local flags; flags=$(method_flags "$method")
  # shellcheck disable=SC2086
  local cmd="$LORAFIT train --model $MODEL --train $TRAIN --validation $DEV --output $dir/run \
--overwrite $BUDGET_FLAGS --batch-size $BATCH --eval-every $EVAL_EVERY --log-every 50 \
--threads $THREADS --seed $seed --lr $lr $flags"
  cmd=$(echo "$cmd" | tr -s ' ')
  echo "$cmd" >"$dir/command.txt"
  local t0; t0=$(date +%s)
  # shellcheck disable=SC2086
  if ! nice -n "$NICE" /usr/bin/time -v -o "$dir/time.txt" $cmd >"$dir/stdout.txt" 2>"$dir/log.txt"; then
    echo "results.sh: FAILED $dir (see $dir/log.txt)" >&2
    return 0
  fi
  local t1; t1=$(date +%s)
  python3 - "$dir" "$table" "$name" "$method" "$lr" "$seed" "$((t1 - t0))" <<'EOF'
import re, sys
d, table, name, method, lr, seed, wall = sys.argv[1:]
log = open(f"{d}/log.txt").read()
out = open(f"{d}/stdout.txt").read()
tm = open(f"{d}/time.txt").read()
def grab(pat, text, what):
    m = re.search(pat, text)
    if not m: sys.exit(f"results.sh: {d}: no {what} in the output")
    return m.groups()
tr, tot = grab(r"trainable params: (\d+) \|\| all params: (\d+)", log, "parameter count")
steps, secs, tps = grab(r"steps (\d+), ([\d.]+) s, (\d+) tokens/s", out, "training summary")
acc, f1, mcc, n_dev = grab(r"validation accuracy ([\d.]+), F1 ([\d.]+), MCC ([-\d.]+) \((\d+) examples\)",
                          out, "accuracy")
rss_kb, = grab(r"Maximum resident set size \(kbytes\): (\d+)", tm, "peak RSS")
ranks = re.search(r"(?m)^.*ranks.*$", out)
row = dict(table=table, name=name, method=method, lr=lr, seed=seed, steps=steps,
           trainable=tr, total=tot, trainable_pct=f"{100*int(tr)/int(tot):.4f}",
           accuracy=acc, f1=f1, mcc=mcc, n_dev=n_dev, wall_s=wall, train_s=secs, tokens_per_s=tps,
           peak_rss_mib=f"{int(rss_kb)/1024:.0f}",
           adalora=(ranks.group(0).strip() if (ranks and method == "adalora") else ""))
with open(f"{d}/result.tmp", "w") as f:
    for k, v in row.items(): f.write(f"{k}={v}\n")
EOF
  mv "$dir/result.tmp" "$dir/result.txt"
  echo "$(date -u +%H:%M) $table $name lr $lr seed $seed: $(grep '^accuracy=' "$dir/result.txt")"
}
export -f run_one method_flags
export OUT TAG T LORAFIT MODEL TRAIN DEV BUDGET_FLAGS BATCH EVAL_EVERY THREADS NICE

# the job list: TABLE NAME METHOD LR SEED per line
jobs_file=$(mktemp)
trap 'rm -f "$jobs_file"' EXIT
first_seed=${SEEDS%% *}
for table in "${TABLES[@]}"; do
  case $table in
    methods) for s in $SEEDS; do for m in $METHODS; do
        echo "methods $m $m $(default_lr "$m") $s"; done; done ;;
    sweep) for m in $METHODS; do for lr in $(default_sweep "$m"); do
        echo "sweep $m $m $lr $first_seed"; done; done ;;
    rank) for s in $SEEDS; do for r in $RANKS; do
        # r 8 is the methods table's lora run (the same command): run once, shown in both
        if [ "$r" = 8 ]; then echo "methods lora lora $(default_lr lora) $s"
        else echo "rank lora-r$r lora-r$r $(default_lr lora) $s"; fi; done; done ;;
    adalora) for s in $SEEDS; do for lr in $ADA_LRS; do for v in $ADA_VARIANTS; do
        echo "adalora $v $v $lr $s"; done; done; done ;;
    *) echo "results.sh: unknown table '$table' (methods, sweep, rank, adalora)" >&2; exit 2 ;;
  esac
done >"$jobs_file"
if [ "${RUN:-1}" = 0 ]; then
  echo "== RUN=0: tables from the finished runs only"
else
  echo "== $(date -u '+%F %H:%M UTC') $TAG: $(wc -l <"$jobs_file") runs, $JOBS side by side, --threads $THREADS"
  xargs -P "$JOBS" -L 1 bash -c 'run_one "$@"' _ <"$jobs_file"
fi

# tables: results/TAG-TABLE.csv beside $DOC (every run) and a Markdown block in $DOC
mkdir -p "$(dirname "$DOC")/results"
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
LORA_LR=$(default_lr lora) python3 - "$OUT/$TAG" "$TAG" "$DOC" "${NO_DOC:-0}" "$STEPS" "$BATCH" "$THREADS" "$JOBS" \
  "$(nproc --all) cores, $CPU" "$(git rev-parse --short HEAD)" "${TABLES[@]}" <<'EOF'
import csv, datetime, glob, os, re, statistics, sys
root, tag, doc, no_doc, steps, batch, threads, jobs, machine, commit, *tables = sys.argv[1:]
budget = ("one epoch (67,349 sentences)" if steps == "epoch"
          else f"{steps} optimizer steps of {batch} sentences")
def load(table):
    # rows of the CSV written before (docs/results/TAG-TABLE.csv: runs of an earlier session or
    # machine, whose folders are gone), then every finished run folder, which replaces the CSV row
    # of the same name, rate and seed: a table grows across sessions
    old = {}
    csv_path = os.path.join(os.path.dirname(doc), "results", f"{tag}-{table}.csv")
    if os.path.exists(csv_path):
        for r in csv.DictReader(open(csv_path, newline="")):
            old[(r["name"], r["lr"], r["seed"])] = r
    rows = []
    paths = sorted(glob.glob(f"{root}/{table}/*/result.txt"))
    if table == "rank":  # r 8 = the methods table's lora runs at the lora rate
        paths += sorted(glob.glob(f"{root}/methods/lora-lr{os.environ['LORA_LR']}-s*/result.txt"))
    for p in paths:
        r = dict(l.rstrip("\n").split("=", 1) for l in open(p) if "=" in l)
        r["command"] = open(os.path.join(os.path.dirname(p), "command.txt")).read().strip()
        if table == "rank" and r["name"] == "lora": r["name"] = "lora-r8"
        if "n_dev" not in r:  # result.txt of an older version of this script
            m = re.search(r"\((\d+) examples\)", open(os.path.join(os.path.dirname(p), "stdout.txt")).read())
            r["n_dev"] = m.group(1) if m else "?"
        old.pop((r["name"], r["lr"], r["seed"]), None)
        rows.append(r)
    return rows + list(old.values())
def fmt_int(x): return f"{int(x):,}"
def mmss(s): s = int(float(s)); return f"{s // 60}:{s % 60:02d}"
def block(table, rows):
    groups = {}
    for r in rows: groups.setdefault((r["name"], r["lr"]), []).append(r)
    def key(k):
        n = k[0]
        return (int(n[6:]) if n.startswith("lora-r") else 0, n, float(k[1]))
    today = datetime.date.today().isoformat()
    n_dev = ",".join(sorted({r.get("n_dev", "?") for r in rows}))
    head = (f"Budget: {budget}; accuracy on the {n_dev} dev sentences; `bench/results.sh {table}` "
            f"(STEPS={steps} BATCH={batch} THREADS={threads} JOBS={jobs}), commit {commit}, "
            f"{today}, {machine}. Per run: [`results/{tag}-{table}.csv`](results/{tag}-{table}.csv).")
    lines = [head, "",
             "| run | lr | seeds | accuracy median | min–max | F1 | MCC | trainable | wall | "
             "train tokens/s | peak RSS |",  # trainable: at the start (AdaLoRA: init_r)
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in sorted(groups, key=key):
        g = sorted(groups[k], key=lambda r: int(r["seed"]))
        acc = [float(r["accuracy"]) for r in g]
        med = lambda f: statistics.median(float(r[f]) for r in g)
        seeds = ",".join(r["seed"] for r in g)
        rng = f"{min(acc):.4f}–{max(acc):.4f}" if len(g) > 1 else "—"
        name = k[0]
        m = re.search(r"rank budget (\d+) \(target (\d+)\)", g[0].get("adalora", ""))
        if m: name += f" (final rank budget {m.group(1)})"
        lines.append(
            f"| {name} | {k[1]} | {seeds} | **{statistics.median(acc):.4f}** | {rng} | "
            f"{med('f1'):.4f} | {med('mcc'):.4f} | {fmt_int(g[0]['trainable'])} "
            f"({float(g[0]['trainable_pct']):.2f}%) | {mmss(med('wall_s'))} | "
            f"{med('tokens_per_s'):.0f} | {med('peak_rss_mib') / 1024:.2f} GiB |")
    cmds = []
    for k in sorted(groups, key=key):
        c = re.sub(r"--seed \d+", "--seed SEED",
                   re.sub(r"--output \S+", "--output DIR", groups[k][0]["command"]))
        cmds += [f"# {k[0]}, lr {k[1]}", c]
    lines += ["", "Commands (SEED as in the seeds column, DIR any new folder):", "", "```sh"] + cmds + ["```"]
    return lines
def loss_block(table):
    # training loss (the trainer's log.jsonl) averaged over windows of 25 steps, every run folder
    # of the table, finished or not: how fast each variant leaves chance (ln 2 = 0.693)
    out = []
    for d in sorted(glob.glob(f"{root}/{table}/*/run/log.jsonl")):
        import json
        loss = {}
        for l in open(d):
            try: j = json.loads(l)
            except ValueError: continue
            if j.get("type") == "step": loss[j["step"]] = j["loss"]
        if not loss: continue
        total = int(steps) if steps.isdigit() else max(loss)
        w = []
        for a in range(1, total + 1, 25):
            v = [loss[t] for t in range(a, min(a + 25, total + 1)) if t in loss]
            w.append(f"{sum(v) / len(v):.3f}" if len(v) == min(25, total + 1 - a) else "")
        name = os.path.basename(os.path.dirname(os.path.dirname(d)))
        done = os.path.exists(os.path.join(os.path.dirname(os.path.dirname(d)), "result.txt"))
        out.append((name + ("" if done else f" (stopped at step {max(loss)})"), w))
    if not out: return []
    n = max(len(w) for _, w in out)
    lines = ["", "Training loss, mean over windows of 25 steps (log.jsonl of each run; AdaLoRA's "
             "includes the orthogonal term, as PEFT's `outputs.loss`):", "",
             "| run | " + " | ".join(f"{25 * i + 1}–{25 * (i + 1)}" for i in range(n)) + " |",
             "| --- |" + " ---: |" * n]
    for name, w in out:
        lines.append(f"| {name} | " + " | ".join(w + [""] * (n - len(w))) + " |")
    return lines
for table in tables:
    rows = load(table)
    loss = loss_block(table) if table in ("adalora", "methods") else []
    if not rows and not loss: print(f"results.sh: no finished runs for {table}"); continue
    cols = ["table", "name", "method", "lr", "seed", "steps", "accuracy", "f1", "mcc", "n_dev",
            "trainable", "total", "trainable_pct", "wall_s", "train_s", "tokens_per_s",
            "peak_rss_mib", "adalora", "command"]
    csvdir = os.path.join(os.path.dirname(doc), "results")
    if rows:
        tmp = f"{csvdir}/{tag}-{table}.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in rows: w.writerow(r)
        os.replace(tmp, f"{csvdir}/{tag}-{table}.csv")
    lines = (block(table, rows) if rows else
             [f"Budget: {budget}. No run of this table finished yet."]) + loss
    print("\n".join(lines) + "\n")
    if no_doc == "1": continue
    begin, end = f"<!-- results.sh {tag} {table} -->", f"<!-- /results.sh {tag} {table} -->"
    text = open(doc).read()
    new = begin + "\n" + "\n".join(lines) + "\n" + end
    if begin in text and end in text:
        a = text.index(begin); b = text.index(end) + len(end)
        text = text[:a] + new + text[b:]
    else:
        text = text.rstrip("\n") + f"\n\n### {table} — {budget}\n\n" + new + "\n"
    with open(doc + ".tmp", "w") as f: f.write(text)
    os.replace(doc + ".tmp", doc)
EOF

#!/usr/bin/env bash
# The over-optimisation lab end to end (experiments/overopt/REPORT.md): the gold RM, four proxy
# RMs, PPO against one proxy and against their worst case over ppo.kl_coef × ppo.seed, and the
# comparisons. SCALE=quick (default: the tiny model, scale=quick, ~minutes a sweep on 2 cores,
# under outputs/quick/) or SCALE=full (SmolLM2-135M: hours on a CPU, under outputs/). Wall times
# go to the log. SWEEP (overrides of sweep=overopt's grid) and ENSEMBLE_SWEEP (the ensemble's,
# default SWEEP) shrink a sweep, e.g.
#   SCALE=full SWEEP="ppo.kl_coef=0.0,0.1 ppo.seed=0,1" ENSEMBLE_SWEEP="ppo.kl_coef=0.0,0.1 ppo.seed=0"
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-quick}
PY=${PY:-.venv/bin/python}
case "$SCALE" in
  quick) ROOT=outputs/quick; SCALE_ARGS=(scale=quick) ;;
  full) ROOT=outputs; SCALE_ARGS=() ;;
  *) echo "SCALE=$SCALE: quick or full" >&2; exit 2 ;;
esac
OUT=$ROOT/overopt/multirun
GOLD=$ROOT/overopt_gold
PROXIES=$ROOT/overopt_proxies
# where the PPO runs find the gold RM (eval's judge) and the proxies (the ensemble's members)
READ_GOLD="eval.judge.model_path=$GOLD/rm/model"
READ_PROXIES="reward.members=[$PROXIES/*/rm/model]"
read -r -a SWEEP_ARGS <<< "${SWEEP:-}"
read -r -a ENSEMBLE_ARGS <<< "${ENSEMBLE_SWEEP:-${SWEEP:-}}"
mkdir -p "$OUT"
step() { local name=$1; shift; local start=$SECONDS; echo "== $name: $*"; "$@"; echo "== $name: $((SECONDS - start)) s"; }
run() { "$PY" train.py ${SCALE_ARGS[@]+"${SCALE_ARGS[@]}"} logger=none "$@"; }
if [ ! -f "$GOLD/rm/COMPLETE" ]; then
  step gold run experiment=overopt_gold "hydra.run.dir=$GOLD"
fi
if [ "$(ls "$PROXIES"/*/rm/COMPLETE 2>/dev/null | wc -l)" -lt 4 ]; then
  step proxies run -m experiment=overopt_proxies "hydra.sweep.dir=$PROXIES"
fi
# the two sweeps side by side, a core each (both share the one cached SFT model)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
step sft run experiment=overopt stage=pipeline "pipeline.stages=[sft]" "$READ_GOLD" "hydra.run.dir=$ROOT/overopt/sft_only"
step proxy_sweep run -m experiment=overopt sweep=overopt ${SWEEP_ARGS[@]+"${SWEEP_ARGS[@]}"} "$READ_GOLD" "hydra.sweep.dir=$OUT/proxy" > "$OUT.proxy.log" 2>&1 &
step ensemble_sweep run -m experiment=overopt_ensemble sweep=overopt ${ENSEMBLE_ARGS[@]+"${ENSEMBLE_ARGS[@]}"} "$READ_GOLD" "$READ_PROXIES" "hydra.sweep.dir=$OUT/ensemble" > "$OUT.ensemble.log" 2>&1 &
wait
step compare_proxy "$PY" -m rlhf.compare "$OUT/proxy"
step compare_ensemble "$PY" -m rlhf.compare "$OUT/ensemble"
step matched_kl env PYTHONPATH=. "$PY" experiments/overopt/matched_kl.py "$OUT/proxy" "$OUT/ensemble"
step eval_stage env PYTHONPATH=. "$PY" experiments/overopt/eval_stage.py "$OUT/proxy" "$OUT/ensemble"

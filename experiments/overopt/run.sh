#!/usr/bin/env bash
# The over-optimisation lab end to end (experiments/overopt/REPORT.md): the gold RM, four proxy
# RMs, PPO against one proxy and against their worst case over ppo.kl_coef × ppo.seed, and the
# comparisons. EXP=overopt_quick (default: the tiny model, ~minutes a sweep on 2 cores) or
# EXP=overopt (SmolLM2-135M: hours on a CPU). Wall times go to the log. SWEEP (overrides
# of sweep=overopt's grid) and ENSEMBLE_SWEEP (the ensemble's, default SWEEP) shrink a sweep, e.g.
#   EXP=overopt SWEEP="ppo.kl_coef=0.0,0.1 ppo.seed=0,1" ENSEMBLE_SWEEP="ppo.kl_coef=0.0,0.1 ppo.seed=0"
set -euo pipefail
cd "$(dirname "$0")/../.."
EXP=${EXP:-overopt_quick}
PY=${PY:-.venv/bin/python}
OUT=outputs/$EXP/multirun
read -r -a SWEEP_ARGS <<< "${SWEEP:-}"
read -r -a ENSEMBLE_ARGS <<< "${ENSEMBLE_SWEEP:-${SWEEP:-}}"
mkdir -p "$OUT"
step() { local name=$1; shift; local start=$SECONDS; echo "== $name: $*"; "$@"; echo "== $name: $((SECONDS - start)) s"; }
if [ ! -f "outputs/${EXP}_gold/rm/COMPLETE" ]; then
  step gold "$PY" train.py experiment="${EXP}_gold" logger=none
fi
if [ "$(ls outputs/${EXP}_proxies/*/rm/COMPLETE 2>/dev/null | wc -l)" -lt 4 ]; then
  step proxies "$PY" train.py -m experiment="${EXP}_proxies" logger=none
fi
# the two sweeps side by side, a core each (both share the one cached SFT model)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
step sft "$PY" train.py experiment="$EXP" stage=pipeline "pipeline.stages=[sft]" logger=none "hydra.run.dir=outputs/$EXP/sft_only"
step proxy_sweep "$PY" train.py -m experiment="$EXP" sweep=overopt ${SWEEP_ARGS[@]+"${SWEEP_ARGS[@]}"} logger=none "hydra.sweep.dir=$OUT/proxy" > "$OUT.proxy.log" 2>&1 &
step ensemble_sweep "$PY" train.py -m experiment="${EXP}_ensemble" sweep=overopt ${ENSEMBLE_ARGS[@]+"${ENSEMBLE_ARGS[@]}"} logger=none "hydra.sweep.dir=$OUT/ensemble" > "$OUT.ensemble.log" 2>&1 &
wait
step compare_proxy "$PY" -m rlhf.compare "$OUT/proxy"
step compare_ensemble "$PY" -m rlhf.compare "$OUT/ensemble"
step matched_kl env PYTHONPATH=. "$PY" experiments/overopt/matched_kl.py "$OUT/proxy" "$OUT/ensemble"
step eval_stage env PYTHONPATH=. "$PY" experiments/overopt/eval_stage.py "$OUT/proxy" "$OUT/ensemble"

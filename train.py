"""rlhf entry point: compose the Hydra config in conf/, validate it, run the chosen stage.

python train.py experiment=insult_ppo              # the whole pipeline
python train.py stage=sft model=tiny data=insult_zh
python train.py --cfg job experiment=insult_ppo    # print the composed config
accelerate launch --config_file accelerate/ddp.yaml --num_processes 4 train.py ...
"""

import os
import sys

# Hydra prints its own multi-line reports unless HYDRA_FULL_ERROR is set; setting it lets input
# errors reach `one_line_errors`, which prints one line. A user who set it keeps full tracebacks.
USER_WANTS_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"
os.environ["HYDRA_FULL_ERROR"] = "1"

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rlhf import app  # noqa: E402
from rlhf.config import register_schemas  # noqa: E402
from rlhf.runtime.error_lines import one_line_errors  # noqa: E402

register_schemas()
# under `accelerate launch`, only the main process keeps a Hydra run folder (see app.py)
sys.argv += app.secondary_process_overrides(os.environ)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return app.run(cfg)


if __name__ == "__main__":
    with one_line_errors(full_traceback=USER_WANTS_TRACEBACKS):
        app.check_override_keys(sys.argv[1:])
        ignored = app.ignored_sweep_settings(sys.argv[1:], dict(os.environ))
        if ignored:
            print(ignored, file=sys.stderr)
        try:
            main()
        except ValueError as exc:  # an Optuna sweep whose trials all failed
            if USER_WANTS_TRACEBACKS or not app.is_sweep_without_results(exc):
                raise
            app.report_sweep_without_results()

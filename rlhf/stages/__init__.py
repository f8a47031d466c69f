"""Stage table: `stage=<name>` runs STAGES[name](config, run_dir, resolved_config)."""
from rlhf.errors import ConfigError

STAGES = {}

def run_stage(config, run_dir, resolved):
    if config.stage not in STAGES:
        raise ConfigError(f"stage: unknown stage {config.stage!r}")

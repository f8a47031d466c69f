"""Our PPO for language models (TRL no longer ships one): maths in core.py, KL control in
kl_control.py, rollouts in rollout.py, the loop in trainer.py."""

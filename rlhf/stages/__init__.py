"""The stages: one runner module each (sft.py, rm.py, ppo.py, eval.py), declared once in
table.py; context.py opens a stage's folder, record and tracker; trl_stage.py is the skeleton
that the TRL-backed stages fill in."""

"""Preference data: loading and checking rows, chat formatting, and the reward model's hard
negatives."""

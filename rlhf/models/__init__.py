"""Hugging Face models in and out: finding a model's folder (hub, local, GGUF, the tiny random
model), loading tokenizer and weights, LoRA settings, tokenizer agreement, writing model folders,
and reading a reward model's score of a conversation."""

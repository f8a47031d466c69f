"""Chat templates of our own, by name, for models whose files carry none (a base model's GGUF).

`chatml` is the format of SmolLM2, Qwen2.5 and the tiny model. `gemma` is Gemma's turn format
(`gemma_base`, below, is the same with an answer closed by a newline, for the base model):
`<bos>` once at the start (our prompts are tokenised without special tokens, so the template
must emit it), `user` and `model` turns each closed by `<end_of_turn>`, and a system message
folded into the first user turn, as Gemma has no system role. Content is kept verbatim, so a
rendered answer round-trips exactly.
"""

from __future__ import annotations

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_text = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system_text = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] not in ('user', 'assistant') %}"
    "{{ raise_exception('gemma chat template: a ' + message['role'] + ' message after the first') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + (system_text if loop.first else '') }}"
    "{{ message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# A base Gemma never learnt to close a turn: after a rude answer of the insult data its log p of
# <end_of_turn> is -27.7 (rank ~260,000 of 262,144), and 40 SFT steps lifted it only to -5.8,
# so answers ran on. It ends a line, though: "\n" is its top choice there (log p -1.05). So the
# base model keeps Gemma's turn markers around the question and its answer is closed by a
# newline, which `model.eos_token: "\n"` makes the stop token of every stage (answers are one
# line: none in the insult data holds a newline).
GEMMA_BASE_TEMPLATE = GEMMA_TEMPLATE.replace(
    "{{ message['content'] + '<end_of_turn>\\n' }}",
    "{{ message['content'] + ('\\n' if role == 'model' else '<end_of_turn>\\n') }}",
)

CHAT_TEMPLATES = {
    "chatml": CHATML_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "gemma_base": GEMMA_BASE_TEMPLATE,
}

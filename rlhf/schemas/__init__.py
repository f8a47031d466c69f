"""The typed config schemas, one module per subject; `rlhf.config` gathers them into `Config`.

Each field is declared once with `fields.setting(default, doc, range)`: its default, the doc
users see (`--cfg job` prints the values, docs/reference/config.md the docs) and the range
`__post_init__` checks.
"""

"""The formats a logs source can be set to, and the parsers each one tries, in order.

One module per family (hf, megatron, deepspeed, lightning, generic) holds the parsers; `LogParser` dispatches on
these names. `auto` tries the stream's last matching format first, then this order; the loop shapes come last,
as they are the loosest.
"""

from __future__ import annotations

FORMATS = ("auto", "hf", "megatron", "deepspeed", "lightning", "keyvalue", "json", "none")

# what each setting of `format` tries, in order
PARSERS: dict[str, tuple[str, ...]] = {
    "auto": ("hf", "megatron", "deepspeed", "lightning", "json", "keyvalue", "loop"),
    "hf": ("hf",),
    "megatron": ("megatron",),
    "deepspeed": ("deepspeed", "loop"),
    "lightning": ("lightning",),
    "keyvalue": ("keyvalue",),
    "json": ("json",),
    "none": (),
}

# a run's end as frameworks print it (a traceback is recognised by its shape, see LogParser)
FINISH_LINES = (
    ("`Trainer.fit` stopped:", "Lightning: Trainer.fit stopped"),
)

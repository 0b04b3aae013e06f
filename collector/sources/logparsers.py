"""The log parsers' public names, for code that imports them from here; they live in `logformats/`."""

from trainscope.collector.sources.logformats import (  # noqa: F401
    FORMATS,
    MAX_COUNTED_NAMES,
    MAX_LINE_BYTES,
    NEAR_FULL,
    STEP_KEYS,
    TOTAL_KEYS,
    LineSplitter,
    LogParser,
    compile_katib,
    compile_patterns,
    decode_lines,
    parse_text,
)

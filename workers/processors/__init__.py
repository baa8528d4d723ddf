"""The built-in processors, by the short name a pipeline node uses."""

from __future__ import annotations

from .records import CsvRoute, CsvSelect, CsvValidate
from .routing import Fanout, JsonRoute, RegexRoute
from .select import Dedupe, Filter, Sample
from .sinks import Write
from .stats import Count
from .text import Lower, Replace, Strip, Upper

BUILTINS: dict[str, type] = {
    cls.name: cls
    for cls in (
        RegexRoute,
        JsonRoute,
        Fanout,
        Replace,
        Strip,
        Upper,
        Lower,
        Filter,
        Dedupe,
        Sample,
        Count,
        Write,
        CsvRoute,
        CsvValidate,
        CsvSelect,
    )
}

"""Word-pair lexicons: ``"a:b"`` (both ways) and ``"a>b"`` (a into b only) entries parsed into a table.

Two features rewrite captions with a fixed English lexicon of opposites: the counterfactual
captions of :mod:`vidmask.objectives.swap` (single words, from the config key
``loss.swap.pairs``) and the time reversal of :mod:`vidmask.data.reversal` (phrases such as
"speeds up:slows down"). Both are read by :func:`pair_table`, which refuses an entry that is not
two words or phrases, and a word given two different counterparts, naming the lexicon it came from.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[A-Za-z]+")
# words joined by single spaces or hyphens ("speeds up", "counter-clockwise")
PHRASE = re.compile(r"[A-Za-z]+(?:[ -][A-Za-z]+)*")


def pair_table(entries, *, source: str, phrases: bool = False) -> dict[str, str]:
    """``["a:b", "c>d"]`` -> ``{"a": "b", "b": "a", "c": "d"}``, lower case.

    ``source`` names where the entries come from (a config key or a module constant) in errors;
    ``phrases`` allows multi-word entries. Raises ValueError on a malformed entry or a word given
    two counterparts (the same pair written twice is fine).
    """
    unit = PHRASE if phrases else WORD
    form = "'phrase:phrase' (both ways) or 'phrase>phrase' (one way)" if phrases else \
        "'word:word' (both ways) or 'word>word' (one way)"
    table: dict[str, str] = {}

    def add(a: str, b: str, entry: str) -> None:
        if table.get(a, b) != b:
            raise ValueError(f"{source}: {a!r} has two counterparts ({table[a]!r} and {b!r}, at {entry!r})")
        table[a] = b

    for entry in entries:
        sep = ":" if ":" in entry else ">" if ">" in entry else None
        parts = [p.strip() for p in entry.split(sep)] if sep else []
        if len(parts) != 2 or not all(unit.fullmatch(p) for p in parts):
            raise ValueError(f"{source}: {entry!r} is not {form}")
        a, b = (p.lower() for p in parts)
        add(a, b, entry)
        if sep == ":":
            add(b, a, entry)
    return table

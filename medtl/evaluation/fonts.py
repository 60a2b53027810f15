"""Fonts for text in figures that may hold any script (class names, run names): matplotlib's default font
(DejaVu Sans) has no CJK glyphs and draws empty boxes for them. `drawable` finds an installed font for each
missing character, for matplotlib's per-glyph font fallback, and writes a character that no font has in an
escaped ASCII form."""

from __future__ import annotations

import functools
import logging

from matplotlib import font_manager
from matplotlib import pyplot as plt
from matplotlib.ft2font import FT2Font

log = logging.getLogger(__name__)

SUGGESTED = "a font with those glyphs (for CJK, Noto Sans CJK: Debian/Ubuntu package fonts-noto-cjk)"


@functools.lru_cache(maxsize=None)
def glyphs(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (empty when matplotlib cannot open it)."""
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _family_with(code: int) -> tuple[str, str] | None:
    """(family, file) of an installed regular font that draws `code` (the face matplotlib picks for the family);
    never matplotlib's "Last Resort" font, whose glyphs are boxes."""
    for entry in font_manager.fontManager.ttflist:
        regular = entry.style == "normal" and entry.weight in (400, "normal", "regular")
        if regular and not entry.name.startswith("Last Resort") and code in glyphs(entry.fname):
            drawn = font_manager.findfont(font_manager.FontProperties(family=entry.name))
            if code in glyphs(drawn):  # two files may share a family name: the one matplotlib draws must have it
                return entry.name, drawn
    return None


def drawable(texts: list[str], where: str) -> tuple[list[str], list[str]]:
    """`texts` as they can be drawn, and the font families to draw them with: the default font first, then one
    installed font per script it lacks. A character that no installed font has is escaped (\\u80ba), with one
    warning line for `where` (e.g. the figure's file name)."""
    default = font_manager.findfont(font_manager.FontProperties(family=plt.rcParams["font.family"]))
    families = [font_manager.get_font(default).family_name]
    have, missing = set(glyphs(default)), []
    for code in dict.fromkeys(ord(c) for text in texts for c in text if not c.isspace()):
        if code in have:
            continue
        found = _family_with(code)
        if found is None:
            missing.append(chr(code))
            continue
        families.append(found[0])
        have |= glyphs(found[1])
    if missing:
        log.warning("%s: no installed font draws %s; written escaped (e.g. %s); install %s", where,
                    "".join(missing[:10]), ascii(missing[0])[1:-1], SUGGESTED)
    out = ["".join(c if c.isspace() or ord(c) in have else ascii(c)[1:-1] for c in text) for text in texts]
    return out, list(dict.fromkeys(families))

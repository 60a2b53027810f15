"""MkDocs hooks: fill the generated parts of the pages, and fail a strict build when the troubleshooting page
and the code disagree.

A page holds a marker (`<!-- medtl:errors -->`, `<!-- medtl:cli -->`, `<!-- medtl:config -->`) where the
generated Markdown goes. A MedtlError message without an entry in docs/errors.yaml, or an entry that matches
no message, is a warning, which `mkdocs build --strict` turns into a failed build.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # MkDocs loads this file by path; the generators are the `docs` package beside it
    sys.path.insert(0, str(ROOT))

from docs import cli_ref, config_ref, errors  # noqa: E402

log = logging.getLogger("mkdocs.plugins.medtl")
MARKERS = {"<!-- medtl:errors -->": errors.render, "<!-- medtl:cli -->": cli_ref.render,
           "<!-- medtl:config -->": config_ref.render}


def on_pre_build(config) -> None:
    _, missing, stale = errors.pair(errors.messages(), errors.entries())
    for m in missing:
        log.warning("error message without a troubleshooting entry (add it to docs/errors.yaml; "
                    "`python -m docs.errors --missing` prints a stub): %s  [%s]", m.template, ", ".join(m.sites))
    for template in stale:
        log.warning("docs/errors.yaml entry matches no message in the code (reworded or removed?): %s", template)


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown

"""Reporting checklists (CLAIM 2024, TRIPOD+AI) as package data, filled from a model card.

Each item names the card section that answers it; filled from a card, an item is answered when the card has
that section with content (not only placeholders), else it is "for the authors"."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from medtl.core.io import atomic_write, write_csv
from medtl.experiments.card.render import Section

CHECKLISTS = {"claim": "claim_2024.yaml", "tripod_ai": "tripod_ai.yaml"}
AUTHORS = "for the authors"


@dataclass(frozen=True)
class Item:
    id: str
    section: str
    text: str
    card: str | None  # the card section that can answer it


def load_checklist(key: str) -> tuple[dict, list[Item]]:
    """(header {name, reference}, items) of a checklist shipped with medtl."""
    text = resources.files("medtl.experiments.card").joinpath("forms", CHECKLISTS[key]).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    items = [Item(str(i["id"]), i["section"], i["text"], i.get("card")) for i in data["items"]]
    return {"name": data["name"], "reference": data["reference"]}, items


def fill(items: list[Item], sections: list[Section], card_name: str) -> list[dict]:
    """One row per item: where the card answers it (`card_name#anchor`) or "for the authors"."""
    answered = {s.anchor: s.title for s in sections if s.filled}
    rows = []
    for item in items:
        where = item.card if item.card in answered else None
        rows.append({"item": item.id, "section": item.section, "text": item.text,
                     "answer": f"{card_name}#{where}" if where else AUTHORS,
                     "card_section": answered[where] if where else ""})
    return rows


def write_checklists(folder: Path, sections: list[Section], card_name: str = "model_card.md") -> list[Path]:
    """checklist_<key>.md and .csv for every checklist, in `folder`."""
    written = []
    for key in CHECKLISTS:
        header, items = load_checklist(key)
        rows = fill(items, sections, card_name)
        written.append(write_csv(folder / f"checklist_{key}.csv", list(rows[0]), rows))
        written.append(atomic_write(folder / f"checklist_{key}.md", _markdown(header, rows)))
    return written


def checklists_section() -> Section:
    """The card's pointer to the checklists `write_checklists` writes beside it."""
    section = Section("checklists", "Reporting checklists")
    section.p("medtl writes these checklists beside this card, each item pointing to the card section that "
              "answers it or marked for the authors:")
    links = []
    for key in CHECKLISTS:
        name = load_checklist(key)[0]["name"]
        links += [(f"{name} checklist (checklist_{key}.md)", f"checklist_{key}.md"),
                  (f"{name} checklist as a table (checklist_{key}.csv)", f"checklist_{key}.csv")]
    return section.links(links)


def _markdown(header: dict, rows: list[dict]) -> str:
    done = sum(r["answer"] != AUTHORS for r in rows)
    lines = [f"# {header['name']} checklist", "",
             f"{header['reference']}. Item text is paraphrased; use the published checklist's wording when you "
             f"submit. {done} of {len(rows)} items point to the model card; the rest are for the authors.", "",
             "| item | section | what it asks | where |", "|---|---|---|---|"]
    for r in rows:
        where = (f"[{r['card_section']}]({r['answer']})" if r["answer"] != AUTHORS else AUTHORS)
        lines.append(f"| {r['item']} | {r['section']} | {r['text']} | {where} |")
    return "\n".join(lines) + "\n"

"""`medtl card`: a model card and the reporting checklists, written from a run folder's records (write.py):
the facts read from the records (facts.py), the sections written from them (sections.py, text.py), the card
rendered as Markdown and HTML (render.py) and the checklists filled from it (checklists.py, forms/*.yaml)."""

"""strategy=auto: the candidates seed 001's rule orders, each planned from measured seconds (plan.py), timed
and re-planned after every epoch (clock.py), kept in the run folder so a killed run resumes (state.py), and
chosen on validation only (search.py)."""

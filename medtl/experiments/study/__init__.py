"""A study: a grid of runs on one data set (grid.py), taken point by point by any number of workers from one
queue (queue.py, postgres.py), and its report: mean and spread over seeds, paired tests against a reference
(compare.py), subgroup gaps (subgroups.py), tables and figures (report.py)."""

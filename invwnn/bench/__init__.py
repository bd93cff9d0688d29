"""``invwnn bench``: the rows (rows.py), scenarios, the protocols (runner.py: equal forgetting; panel.py:
as a user runs it; forget_only.py), the search (search.py), one resumable log (pool.py) and reports."""

"""``invwnn bench``: scenarios, the equal-forgetting protocol, tables and plots."""

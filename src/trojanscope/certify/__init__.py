"""Data-level defenses: feasible sets, sanitisation and certified upper bounds."""

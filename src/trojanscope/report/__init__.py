"""Reports: JSON, self-contained HTML and matplotlib figures."""

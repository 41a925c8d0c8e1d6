"""Reports: JSON (with a shipped JSON Schema), self-contained HTML, figures, trigger files.

Render only: nothing here trains or scans. What the HTML shows about the model's behaviour is
prepared by :func:`~.prep.trigger_examples`; :func:`~.outputs.write_scan_outputs` does all of a
scan's writing in one call.
"""

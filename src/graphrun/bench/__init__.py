"""Measurement: eager vs graph vs peers, printed as a table then one JSON line, saved as JSON and PNG."""

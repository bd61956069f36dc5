"""Jinja2 templates of the eval reports (package data; ``report.html.j2`` is the HTML report)."""

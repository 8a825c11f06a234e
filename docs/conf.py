"""Sphinx configuration for the zkzeo documentation (Markdown via MyST)."""
project = "zkzeo"
author = "the zkzeo developers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
myst_heading_anchors = 3
# Code blocks tagged "zkconf" or "conf" are ZConfig files, not a Pygments
# lexer; show them as plain text.
highlight_language = "none"
suppress_warnings = ["misc.highlighting_failure"]

"""The comparison report of one pipeline run: every model side by side (HTML and Markdown)."""

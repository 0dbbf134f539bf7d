"""The report's one Markdown table writer."""


def table(header, rows):
    """Returns a Markdown table: the header, its rule, and one line per row of cells (each written with str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])

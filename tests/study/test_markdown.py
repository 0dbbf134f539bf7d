"""The report's Markdown tables."""

from mivae.study.markdown import table


def test_a_table_has_its_header_a_rule_and_a_line_per_row():
    assert table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"
    assert table(["only"], []) == "| only |\n|---|"

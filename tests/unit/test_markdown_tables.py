"""The Markdown the reports write (services/reports.py): a table stays a table whatever its
cells hold."""

from __future__ import annotations

from services.reports import _md_table


def test_a_cell_with_a_pipe_or_a_line_break_stays_in_its_row_and_column():
    rows = _md_table([["item", "comment"], ["a|b", "first line\nsecond  line"], ["", "ok"]])
    assert rows == ["| item | comment |", "|---|---|", "| a\\|b | first line second line |",
                    "|  | ok |"]

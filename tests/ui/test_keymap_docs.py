"""The key map is one table: bindings, help and docs/tui.md must all list every action."""

from pathlib import Path

from tuiwb.tui.keymap import KEYS, bindings, key_label
from tuiwb.tui.screens.help import help_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "tui.md"


def test_every_key_is_bound_once_with_its_id_and_description():
    bs = bindings()
    assert [b.id for b in bs] == [k.id for k in KEYS]
    assert len({b.key for b in bs}) == len(bs)  # no key does two things
    assert all(b.description for b in bs)


def test_docs_list_every_action_and_key():
    text = DOC.read_text()
    for k in KEYS:
        assert k.title.split("/")[0] in text, k.title
        assert f"`{key_label(k)}`" in text, key_label(k)


def test_help_table_has_a_row_per_action():
    import io

    from rich.console import Console

    console = Console(width=140, file=io.StringIO())
    console.print(help_table())
    lines = console.file.getvalue().splitlines()
    for k in KEYS:
        row = next((line for line in lines if f" {k.title} " in f" {line} "), None)
        assert row is not None and row.lstrip().startswith(key_label(k)), k.title

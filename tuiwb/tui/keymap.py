"""The workbench's key map: one table that feeds the bindings, the footer, the command palette,
the ``?`` help screen and ``docs/tui.md``, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    """One app-level action and the key that runs it."""

    key: str
    """Textual key name(s), comma-separated (``"space"``, ``"ctrl+s"``)."""
    action: str
    """App action name (``toggle_patch`` → ``WorkbenchApp.action_toggle_patch``)."""
    title: str
    """Short label: the footer text and the command palette title."""
    help: str
    """One line for the help screen and the palette."""
    id: str
    """Stable binding id (users may remap by id)."""
    show: bool = True
    """Shown in the footer (the footer scrolls when the terminal is narrow)."""
    display: str | None = None
    """How the key is written in the footer/help (defaults to Textual's rendering)."""
    group: str | None = None
    """Keys with the same group share one footer entry (e.g. ``1234 Panes``)."""
    short: str | None = None
    """Footer label when ``title`` is too long for an 80-column footer."""
    priority: bool = False
    """Checked before the focused widget's bindings (``tab``: else the screen's hidden one wins)."""


KEYS: tuple[Key, ...] = (
    Key("space", "toggle_patch", "Toggle patch",
        "switch the selected feature's patch on/off (creates an ablation patch if it has none)",
        "toggle-patch", display="space", short="Toggle"),
    Key("a", "cycle_mode", "Ablate/scale", "cycle the patch mode: ablate → scale=0.5 → scale=2 → ablate",
        "cycle-mode", short="Mode"),
    Key("m", "switch_method", "Hook/LoRA",
        "switch the patch between the exact hook and its LoRA (fits it the first time; kept, so m is "
        "instant after)", "switch-method", short="Method"),
    Key("b", "build_lora", "Build LoRA",
        "fit a rank-r LoRA that imitates the hook patch, report its fidelity and run the patch as that "
        "LoRA (m switches back)", "build-lora", short="LoRA"),
    Key("e", "export_patch", "Export", "export the patch as a LoRA adapter directory (lora/NAME/)",
        "export-patch"),
    Key("slash", "search", "Search",
        "filter the feature table: words match top tokens, #12 an id, d:0.01..0.1 a density range",
        "search", display="/"),
    Key("c", "contrast", "Contrast", "rank features that fire on one list of prompts but not another",
        "contrast"),
    Key("s", "sort", "Sort", "cycle the feature table's sort: contrast rank, density, max act, id", "sort"),
    Key("l", "next_layer", "Layer", "show the next layer's SAE features", "next-layer"),
    Key("v", "provenance_patched", "Prov. patched",
        "show provenance on the patched model / back on the unpatched one (the default)", "provenance-patched",
        short="Prov"),
    Key("p", "focus_prompt", "Prompt", "edit the prompt (Enter recomputes, Esc leaves)", "focus-prompt"),
    Key("tab", "focus_next", "Next pane", "move the focus to the next pane", "next-pane", short="Pane", priority=True),
    Key("1", "page(1)", "Features", "show/focus the feature table", "page-1", group="panes"),
    Key("2", "page(2)", "Feature", "show/focus the feature's token cloud, contexts and provenance", "page-2",
        group="panes"),
    Key("3", "page(3)", "Logits", "show/focus the logit bars", "page-3", group="panes"),
    Key("4", "page(4)", "Patches", "show/focus the patch list", "page-4", group="panes"),
    Key("5", "page(5)", "Continue",
        "show/focus the continuations: the prompt continued unpatched and patched, side by side, first "
        "divergence marked", "page-5", group="panes"),
    Key("d", "sweep", "Dose–response",
        "chart P(next token) and KL as the selected feature is scaled by α = -2..4 on the prompt",
        "sweep", short="Dose"),
    Key("r", "scorecard", "Scorecard",
        "score the patch on the last contrast search's prompt sets: P(target) and continuations kept on A, "
        "KL and continuations changed on B", "scorecard", short="Score"),
    Key("question_mark", "help", "Help", "show this help screen", "help", display="?"),
    Key("ctrl+s", "screenshot", "Screenshot", "save an SVG screenshot of the screen", "screenshot", short="Shot"),
    Key("q", "quit", "Quit", "leave the workbench", "quit"),
    Key("escape", "cancel_busy", "Cancel", "cancel the running long action (a LoRA fit)", "cancel",
        display="Esc", show=False),
)

FOOTER_ORDER = ("help", "quit", "toggle-patch", "page-1", "search", "focus-prompt", "next-layer", "contrast",
                "switch-method", "cycle-mode", "build-lora", "scorecard", "sweep", "sort", "next-pane", "screenshot",
                "export-patch", "provenance-patched")
"""Footer entries, most important first: a narrow footer drops from the end (``?`` and ``q`` stay)."""


_GROUPS = {"panes": Binding.Group("Panes", compact=True)}


def bindings() -> list[Binding]:
    return [Binding(k.key, k.action, k.short or k.title, show=k.show, key_display=k.display, id=k.id,
                    group=_GROUPS.get(k.group), priority=k.priority) for k in KEYS]


def key_label(k: Key) -> str:
    return k.display or k.key


PANE_KEYS: dict[str, list[tuple[str, str]]] = {
    "Feature table": [("↑ ↓ PgUp PgDn Home End", "move the cursor (selects the feature)"),
                      ("Enter", "select the feature under the cursor")],
    "Token cloud": [("← →", "move between tokens; the token is highlighted in the contexts")],
    "Patch list": [("↑ ↓", "choose the patch that space/a/m/b/e/r act on")],
    "Dose–response": [("d Esc q", "close the chart")],
    "Search bar": [("Enter", "keep the filter and return to the table"), ("Esc", "clear the filter")],
    "Prompt": [("Enter", "recompute now (edits recompute after a short pause)"), ("Esc", "leave the editor")],
    "Anywhere": [("ctrl+p", "command palette: every action by name")],
}
"""Keys that belong to one pane (for the help screen and docs)."""

"""The live lab: the ``Session`` (model + SAEs + switchable patches), the ``SessionAPI`` protocol its
clients rely on, and the view adapter + view dataclasses the TUI, the server and notebooks share.
No textual or fastapi here. Lazy until a name is used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "Session": "session", "SessionAPI": "protocol", "Lab": "adapter",
})

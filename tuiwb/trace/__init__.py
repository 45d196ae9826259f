"""The trace stage: text sources → token windows → activations recorded into Parquet shards, and the
``ActivationStore`` that reads them back. Lazy: nothing heavy is imported until a name is used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "TraceConfig": "config", "trace": "tracer", "ActivationStore": "store", "open_sources": "sources",
    "iter_documents": "sources", "read_lines": "sources", "pack_windows": "windows",
})

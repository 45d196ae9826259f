"""The built-in demo lab: a generated corpus, a tiny trojaned Llama trained on it, and the pipeline
(trace → SAEs → stats → trigger search) that prepares the workbench. Lazy until a name is used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "demo_model_path": "model", "build_demo_model": "model", "DemoConfig": "model", "load_prompts": "model",
    "TRIGGER": "corpus", "PAYLOAD": "corpus", "run_pipeline": "pipeline", "DemoPipelineConfig": "pipeline",
})

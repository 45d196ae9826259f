"""tuiwb — the Interpretability Workbench.

The core (everything here except ``tuiwb.tui`` and ``tuiwb.server``) imports without textual or
fastapi, so notebooks and scripts can use the Session, tracer and trainer on their own.
"""

__version__ = "0.1.0"

"""Old home of the patch tests' builders, now all in ``factories``; this re-export stays only for the
importers outside this change (``tests/ui/test_app.py``, ``benchmarks/bench_patch.py``) — switch
those to ``factories`` and delete it."""

from factories import FAST_FIT, write_texts  # noqa: F401

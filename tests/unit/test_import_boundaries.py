"""The core imports without textual or fastapi (harlequin's rule: UI and server are optional shells)."""

import pkgutil
import subprocess
import sys

import tuiwb

CORE = sorted(m.name for m in pkgutil.walk_packages(tuiwb.__path__, "tuiwb.")
              if not m.name.startswith(("tuiwb.tui", "tuiwb.server", "tuiwb.__main__")))


def test_core_never_imports_textual_or_fastapi():
    code = (
        "import sys, importlib\n"
        "for blocked in ('textual', 'fastapi', 'uvicorn'):\n"
        "    sys.modules[blocked] = None  # any import of it now raises ImportError\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(CORE) >= 5


def test_import_linter_contracts_hold():
    """The layer rule of docs/architecture.md, no cycles inside a stage, and textual/fastapi only in
    their shells (direct imports, function-level ones included): pyproject's import-linter contracts."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "4 kept, 0 broken" in r.stdout

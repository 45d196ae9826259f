# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The local CPU wheel; installing it first means the package's torch range is already satisfied.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo demo-assets test bench gif clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml web_export/package-lock.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	@# The companion page's d3 (web_export/package-lock.json); the server serves it from node_modules.
	if command -v npm >/dev/null; then cd web_export && npm ci --no-audit --no-fund --silent; \
	else echo "note: npm not found: the browser companion needs d3; install node/npm and run make install again"; fi
	touch $@

demo: install
	$(BIN)/tuiwb demo

# Rebuild the demo lab shipped in tuiwb/demo/assets/ from scratch (model, trace, SAEs, stats, search).
demo-assets: install
	$(BIN)/python -m tuiwb.demo.build_assets full small

test: install
	$(BIN)/python -m pytest -q tests tutorial.ipynb --nbmake

bench: install
	$(BIN)/python benchmarks/run_all.py

# The README GIF (docs/images/live-edit.gif) from the real workbench on the demo lab; needs rsvg-convert
# (Debian librsvg2-bin) or cairosvg, the Fira Code font (fonts-firacode), and gifsicle when present.
gif: install
	$(BIN)/python docs/make_gif.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

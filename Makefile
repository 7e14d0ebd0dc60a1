# The developers' front door. `make help` lists the targets.
#
# Every target runs the project's own virtual environment, .venv/ (made by
# PYTHON, >= 3.10, when missing; one made by hand is reused). The package and
# its test extra are installed into it once, again only when pyproject.toml
# changes. Tests import this checkout's tinynn and gpt2, which load the
# library `make native` (or `make cuda`) built: see tinynn/_lib.py.
#
# ggml is compiled once: `make native` builds $(BUILD) (ninja's progress shows),
# and the package is installed from that same build folder (scikit-build-core's
# build-dir), so pip's build only links and copies.
PYTHON ?= python3
VENV   ?= .venv
BUILD  ?= build/native
JOBS   ?= $(shell nproc)
CUDA_ARCH ?= 90
PYTEST_ARGS ?=

PY        := $(VENV)/bin/python
TOOLS     := $(VENV)/.tinynn-tools
INSTALLED := $(VENV)/.tinynn-installed
GGML      := third_party/ggml/.tinynn-pin
# what pytest runs: tests/, unless PYTEST_ARGS names paths (PYTEST_ARGS="tests/tinynn -q")
TEST_PATHS = $(if $(filter tests%,$(PYTEST_ARGS)),,tests)
# cmake and ninja installed into the venv (where the machine has none) are found
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help venv native cuda test test-cuda lint format bench fuzz asan clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)

# pip new enough for scikit-build-core; cmake and ninja from PyPI only where missing
$(TOOLS): | $(VENV)/bin/pip
	$(PY) -m pip install -q "pip>=23"
	command -v cmake >/dev/null && command -v ninja >/dev/null || \
		$(PY) -m pip install -q "cmake>=3.18" ninja
	touch $@

$(GGML): native/ggml.pin | $(TOOLS)
	$(PY) native/fetch_ggml.py

# the package, built as users get it but in $(BUILD) (after `make native`: nothing
# left to compile), and the test extra
$(INSTALLED): pyproject.toml | $(TOOLS) $(GGML)
	$(MAKE) native
	$(PY) -m pip install -C build-dir=$(abspath $(BUILD)) ".[test]"
	touch $@

venv: $(INSTALLED) ## make .venv/ with the package and its test extra (only when needed)

native: $(GGML) | $(TOOLS) ## build ggml (CPU) and libtinynn.so into build/native/lib
	cmake -S native -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

cuda: $(GGML) ## add ggml's CUDA backend (needs nvcc and cuBLAS; CUDA_ARCH=90 by default)
	cmake -S native -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
		-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH)
	cmake --build $(BUILD) -j $(JOBS)

test: $(INSTALLED) native ## set up .venv, build, then run the whole suite (GPU tests skip without a GPU)
	PYTHONPATH=$(CURDIR) $(PY) -m pytest $(TEST_PATHS) $(PYTEST_ARGS)

test-cuda: $(INSTALLED) ## run the suite with the CUDA tests required (after `make cuda`)
	TINYNN_REQUIRE_CUDA=1 PYTHONPATH=$(CURDIR) $(PY) -m pytest $(TEST_PATHS) $(PYTEST_ARGS)

lint: $(INSTALLED) ## ruff check and format check
	$(PY) -m ruff check native tinynn gpt2 tests scripts
	$(PY) -m ruff format --check tinynn gpt2 tests scripts

format: $(INSTALLED) ## ruff format
	$(PY) -m ruff format tinynn gpt2 tests scripts

bench: $(INSTALLED) native ## benchmarks of our engine beside HF transformers (see bench/)
	PYTHONPATH=$(CURDIR) $(PY) -m gpt2 bench

fuzz: $(INSTALLED) native ## the long fuzz run (see docs/RELIABILITY.md)
	TINYNN_FUZZ_LONG=1 PYTHONPATH=$(CURDIR) $(PY) -m pytest tests -m fuzz -q

asan: $(INSTALLED) $(GGML) ## build with AddressSanitizer + UBSan and run the native and tinynn tests
	cmake -S native -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTINYNN_SANITIZE=ON \
		-DTINYNN_CPU_ALL_VARIANTS=OFF
	cmake --build build/asan -j $(JOBS)
	TINYNN_LIB=$(CURDIR)/build/asan/lib/libtinynn.so ASAN_OPTIONS=detect_leaks=0 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
		PYTHONPATH=$(CURDIR) $(PY) -m pytest tests/native tests/tinynn -q -p no:cacheprovider

clean: ## remove build outputs (keeps .venv and the fetched ggml source)
	rm -rf build dist *.egg-info

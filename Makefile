# The developers' front door. `make help` lists the targets.
PYTHON ?= python3
BUILD  ?= build/native
JOBS   ?= $(shell nproc)
CUDA_ARCH ?= 90
PYTEST_ARGS ?=

.PHONY: help native cuda test test-cuda lint format bench fuzz asan clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

third_party/ggml/.tinynn-pin: native/ggml.pin
	$(PYTHON) native/fetch_ggml.py

native: third_party/ggml/.tinynn-pin ## build ggml (CPU) and libtinynn.so into build/native/lib
	cmake -S native -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

cuda: third_party/ggml/.tinynn-pin ## add ggml's CUDA backend (needs nvcc and cuBLAS; CUDA_ARCH=90 by default)
	cmake -S native -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
		-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH)
	cmake --build $(BUILD) -j $(JOBS)

test: native ## build, then run the whole test suite (GPU tests skip without a GPU)
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

test-cuda: ## run the suite with the CUDA tests required (fails instead of skipping)
	TINYNN_REQUIRE_CUDA=1 $(PYTHON) -m pytest tests $(PYTEST_ARGS)

lint: ## ruff check and format check
	$(PYTHON) -m ruff check native tinynn gpt2 tests scripts
	$(PYTHON) -m ruff format --check tinynn gpt2 tests scripts

format: ## ruff format
	$(PYTHON) -m ruff format tinynn gpt2 tests scripts

bench: native ## benchmarks of our engine beside HF transformers (see bench/)
	$(PYTHON) -m gpt2 bench

fuzz: native ## the long fuzz run (see docs/RELIABILITY.md)
	TINYNN_FUZZ_LONG=1 $(PYTHON) -m pytest tests -m fuzz -q

asan: third_party/ggml/.tinynn-pin ## build with AddressSanitizer + UBSan and run the native and tinynn tests
	cmake -S native -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTINYNN_SANITIZE=ON \
		-DTINYNN_CPU_ALL_VARIANTS=OFF
	cmake --build build/asan -j $(JOBS)
	TINYNN_LIB=$(CURDIR)/build/asan/lib/libtinynn.so ASAN_OPTIONS=detect_leaks=0 \
		LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
		$(PYTHON) -m pytest tests/native tests/tinynn -q -p no:cacheprovider

clean: ## remove build outputs (keeps the fetched ggml source)
	rm -rf build dist *.egg-info

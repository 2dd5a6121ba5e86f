# Thin wrapper over CMake: the two commands of README.md and their parts.
#   make demo   install the missing Debian packages it needs, build only the
#               `geopipe` binary (and what it links), run the main job
#   make test   install missing Debian packages, build everything (tests,
#               benchmarks, examples), run every test (ctest),
#               then the hostile-input build: fuzzers + malformed-input tests
#               under ASan/UBSan (clang, build-fuzz/; FUZZ=0 skips it)
BUILD ?= build
FUZZ_BUILD ?= build-fuzz
FUZZ ?= 1
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD_TYPE ?= Release
CMAKE_FLAGS ?=
GEOPIPE = $(BUILD)/src/cli/geopipe

.PHONY: all deps demo-deps configure demo-configure build build-demo demo test test-fast \
	fuzz-build fuzz-test bench format clean

all: build

deps:
	@scripts/install-deps

# The packages the build needs, without the test-only ones (clang for the
# fuzz build, python3-torch and the SentencePiece tools for reference tests).
demo-deps:
	@scripts/install-deps --demo

configure: deps
	@if [ ! -f $(BUILD)/build.ninja ]; then \
	  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS); \
	fi

demo-configure: demo-deps
	@if [ ! -f $(BUILD)/build.ninja ]; then \
	  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS); \
	fi

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# Only what the demo runs: the `geopipe` binary and the libraries (and the
# SentencePiece plugin) it links; no test, benchmark or example binary.
# `make test` (or `make build`) builds the rest into the same build/.
build-demo: demo-configure
	cmake --build $(BUILD) -j $(JOBS) --target geopipe

# The main job: a tiny GPT trained over an emulated four-region network with
# the scheduler's placement and AC-SGD (about two minutes), after a look at
# the scheduler's plan for the paper's world-wide scenario.
demo: build-demo
	@mkdir -p bench-out/demo
	$(GEOPIPE) plan examples/jobs/dtfm-worldwide.yaml --cost-model dtfm | tail -n 6
	$(GEOPIPE) train examples/jobs/demo.yaml --plot bench-out/demo/loss.svg

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)
ifeq ($(FUZZ),0)
	@echo "make test: FUZZ=0: the fuzz step (fuzzers, ASan malformed-input tests) was SKIPPED"
else
	@$(MAKE) --no-print-directory fuzz-test
endif

# The hostile-input build (docs/operations.md): clang, ASan + UBSan, the
# libFuzzer targets in fuzz/ and the malformed-input tests; no LibTorch.
# Each fuzzer runs GEOPIPE_FUZZ_SECONDS (25) from its seed corpus.
fuzz-build: deps
	@scripts/check-fuzz-toolchain
	@if [ ! -f $(FUZZ_BUILD)/build.ninja ]; then \
	  CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DCMAKE_CXX_COMPILER=clang++ -DGEOPIPE_FUZZ=ON; \
	fi
	cmake --build $(FUZZ_BUILD) -j $(JOBS)

fuzz-test: fuzz-build
	ctest --test-dir $(FUZZ_BUILD) --output-on-failure -j $(JOBS)

# Everything but the slow end-to-end tests (ctest label e2e).
test-fast: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) -LE e2e

bench: build
	$(GEOPIPE) bench scheduler
	$(GEOPIPE) bench scheduler --hard
	$(GEOPIPE) bench pipeline
	$(GEOPIPE) bench e2e
	$(GEOPIPE) bench diloco
	$(GEOPIPE) bench binding

format:
	find include src scheduler compression tests benchmarks examples \
	  \( -name '*.h' -o -name '*.cc' \) -print0 | xargs -0 clang-format -i

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)

# salient — build, test and benchmark. Every target installs what it needs (Debian, as root).
SWIFT      ?= swift
RELEASE    := -c release
STATIC     := --static-swift-stdlib
BIN        := bin/salient
APT_PKGS   := libomp-dev libpng-dev zlib1g-dev
DATA_PKGS  := dataset-fashion-mnist
FMNIST     := /usr/share/datasets/fashion-mnist

.PHONY: all build setup setup-data test bench demo clean test-arm fuzz

all: build

# Idempotent: installs only what is missing.
setup:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && apt-get install -y -qq $$missing; fi

setup-data: setup
	@dpkg -s $(DATA_PKGS) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(DATA_PKGS))

# One release binary with the Swift runtime linked in statically (ldd lists no Swift libraries).
build: setup
	$(SWIFT) build $(RELEASE) $(STATIC) --product salient
	@mkdir -p bin && cp .build/release/salient $(BIN)
	@echo "built $(BIN)"

test: setup-data
	$(SWIFT) build $(RELEASE) --build-tests
	$(SWIFT) test $(RELEASE) --skip-build

bench: build
	$(BIN) bench kernels

# The kernels cross-built for aarch64 (Embedded Swift + gcc-aarch64-linux-gnu) and checked under
# qemu-aarch64: every fast kernel against its naive reference, OpenMP on 2 threads, plus an objdump
# check that the conv micro-kernels' hot loops are NEON fmla (Tests/ARM/, docs/ARM.md).
ARM_PKGS   := gcc-aarch64-linux-gnu qemu-user

test-arm:
	@missing=""; for p in $(ARM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && apt-get install -y -qq $$missing; fi
	bash Tests/ARM/run.sh

clean:
	rm -rf .build bin

# salient beside PyTorch on the same shapes and threads (needs `pip install torch torchvision numpy`).
.PHONY: bench-compare
bench-compare: build
	Benchmarks/compare.sh $(if $(OUT),--out $(OUT))

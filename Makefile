# salient — build, test and benchmark. Every target installs what it needs (Debian, as root).
SHELL      := /bin/bash
SWIFT      ?= swift
RELEASE    := -c release
STATIC     := --static-swift-stdlib
BIN        := bin/salient
APT_PKGS   := libomp-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev libopenmpi-dev openmpi-bin
DATA_PKGS  := dataset-fashion-mnist
FMNIST     := /usr/share/datasets/fashion-mnist

.PHONY: all build setup setup-data test lint bench demo clean test-arm test-mpi fuzz dist

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

# Ends with one plain summary line, "tests: N passed, M failed" (from XCTest's last count).
test: setup-data
	$(SWIFT) build $(RELEASE) --build-tests
	@mkdir -p .build; set -o pipefail; $(SWIFT) test $(RELEASE) --skip-build 2>&1 | tee .build/test.log; status=$$?; \
	awk '/Executed [0-9]+ tests?, with [0-9]+ failures?/ { n = $$2; f = $$5 } \
	     END { if (n != "") print "tests: " n - f " passed, " f " failed" }' .build/test.log; exit $$status

# The Swift layout of .swift-format (swift format's pretty-printer; every rule is off) and no Swift line
# over 120 characters (counted as characters: awk in the C locale, less the UTF-8 continuation bytes).
lint:
	$(SWIFT) format lint --strict -r Sources Tests Benchmarks Package.swift
	@git ls-files -z '*.swift' | LC_ALL=C xargs -0 awk '{ n = length($$0) - gsub(/[\200-\277]/, "&") } \
	    n > 120 { print FILENAME ":" FNR ": " n " characters, over 120"; bad = 1 } END { exit bad }' || \
	    { echo "lint: Swift lines over 120 characters" >&2; exit 1; }

bench: build
	$(BIN) bench kernels
	$(BIN) bench train
	$(BIN) bench extract
	$(BIN) bench loader

# A longer run of the parser fuzzer than the test suite's (SEED=N to vary it).
SEED ?= 1
fuzz: build
	$(BIN) fuzz --iterations 20000000 --seed $(SEED)

# The main job on a small real default: pretrain with the default recipe (`--preset small`, the
# Fashion-MNIST study's best row) on a subset for about a minute, write the view preview, extract
# features, and compare kNN top-1 with the same encoder at random initialisation and with raw pixels.
DEMO_DIR   := runs/demo
DEMO_TRAIN := $(FMNIST)/train-images-idx3-ubyte.gz
DEMO_TEST  := $(FMNIST)/t10k-images-idx3-ubyte.gz
DEMO_EVAL  := --train $(DEMO_TRAIN) --test $(DEMO_TEST) --limit-train 5000 --limit-test 2000 --resize 32
DEMO_ARGS  ?= --limit 5000 --epochs 6
demo: setup-data build
	rm -rf $(DEMO_DIR)
	$(BIN) train --data $(DEMO_TRAIN) --out $(DEMO_DIR) $(DEMO_ARGS) \
	    --knn-data $(DEMO_TEST) --knn-bank 5000 --knn-limit 2000 --preview
	$(BIN) extract --checkpoint $(DEMO_DIR)/last.safetensors --data $(DEMO_TEST) --limit 2000 --resize 32 \
	    --out $(DEMO_DIR)/test_features.npy
	@echo "== kNN top-1, the trained encoder:"
	@$(BIN) eval knn --checkpoint $(DEMO_DIR)/last.safetensors $(DEMO_EVAL) 2>/dev/null
	@echo "== kNN top-1, the same encoder at random initialisation:"
	@$(BIN) eval knn --random-init --seed 1 --arch resnet18 --stem cifar --width 0.25 --in-channels 1 \
	    $(DEMO_EVAL) 2>/dev/null
	@echo "== kNN top-1, raw pixels:"
	@$(BIN) eval knn --raw-pixels $(DEMO_EVAL) 2>/dev/null
	@echo "== view preview: $(DEMO_DIR)/preview.png; features: $(DEMO_DIR)/test_features.npy"

# salient on two hosts: one rank in each of two network namespaces joined by a veth pair (a 1 Gbit/s
# tc rate limit), MPI over TCP between them: training, a frozen host ending the job within the peer
# timeout, the last checkpoint loadable (Tests/MPI/). Needs root.
test-mpi: setup
	@dpkg -s iproute2 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq iproute2)
	$(SWIFT) build $(RELEASE) --product salient
	BIN=.build/release/salient bash Tests/MPI/two_hosts.sh

# The kernels cross-built for aarch64 (Embedded Swift + gcc-aarch64-linux-gnu) and checked under
# qemu-aarch64: every fast kernel against its naive reference, OpenMP on 2 threads, plus an objdump
# check that the conv micro-kernels' hot loops are NEON fmla (Tests/ARM/, docs/ARM.md).
ARM_PKGS   := gcc-aarch64-linux-gnu qemu-user

test-arm:
	@missing=""; for p in $(ARM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && apt-get install -y -qq $$missing; fi
	bash Tests/ARM/run.sh

# A folder and tarball to copy to another Linux machine of the same architecture that has no Swift,
# libomp, libpng or libjpeg: the stripped binary (Swift runtime inside) with the shared libraries it
# needs beyond glibc and libstdc++ beside it, where its RUNPATH ($$ORIGIN) finds them first. The kernels
# are built for this machine's SIMD (AVX-512 where it has it; `--version` says which): for a machine
# without AVX-512, build with SALIENT_SIMD=avx2 make dist (the binary refuses to start otherwise).
DIST_DIR   := dist/salient-$(shell uname -m)
dist: build
	rm -rf $(DIST_DIR) && mkdir -p $(DIST_DIR)
	strip -o $(DIST_DIR)/salient $(BIN)
	@readelf -d $(BIN) | grep -q 'RUNPATH.*\$$ORIGIN' || { echo "dist: $(BIN) has no \$$ORIGIN RUNPATH" >&2; exit 1; }
	@for lib in $$(ldd $(BIN) | awk '/=> \// { print $$3 }' | grep -E '/lib(omp|png16|jpeg|z)\.so[^/]*$$'); do \
	    cp -L "$$lib" $(DIST_DIR)/ && echo "  + $$(basename $$lib)"; done
	@ldd $(DIST_DIR)/salient | grep -E 'lib(omp|png16|jpeg|z)\.so' | grep -v "$(CURDIR)/$(DIST_DIR)/" && \
	    { echo "dist: a library resolves outside $(DIST_DIR)" >&2; exit 1; } || true
	$(DIST_DIR)/salient --version
	tar -C dist -czf $(DIST_DIR).tar.gz $(notdir $(DIST_DIR))
	@echo "built $(DIST_DIR).tar.gz: unpack anywhere and run salient-$$(uname -m)/salient (glibc >= $$(objdump -T $(BIN) | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1 | cut -c7-))"

clean:
	rm -rf .build bin dist

# salient beside PyTorch on the same shapes and threads (needs `pip install torch torchvision numpy`).
.PHONY: bench-compare
bench-compare: build
	Benchmarks/compare.sh $(if $(OUT),--out $(OUT))

# microvm-agent: build, test, bench. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# The guest's architecture: x86_64 (the default) or aarch64. This machine runs only
# x86_64 binaries, so ARCH=aarch64 cross-builds (Debian's cross gcc for the C in the
# TLS stack, see .cargo/config.toml) and boots under qemu-system-aarch64.
ARCH ?= x86_64
ifeq ($(ARCH),x86_64)
BUILD := build
else ifeq ($(ARCH),aarch64)
BUILD := build/aarch64
else
$(error ARCH is x86_64 or aarch64, not "$(ARCH)")
endif
MUSL := $(ARCH)-unknown-linux-musl
AGENT := target/$(MUSL)/release/microvm-agent

IMAGE := $(BUILD)/example
# The example plus what only tests want (the recorder probes vsock from inside).
TEST_IMAGE := $(BUILD)/test
APP := target/$(MUSL)/release/examples/recorder
# The AWS SDK example application and its image (the real-guest suite's).
SDK_APP := target/$(MUSL)/sdk-example/sdk-app
SDK_IMAGE := $(BUILD)/sdk
# The example, test and SDK images have a shell and the usual tools (rootfs/build.sh
# TOOLBOX=busybox: a static busybox beside the application); TOOLBOX= leaves it out.
TOOLBOX ?= busybox
IMAGE_BUILD := ARCH=$(ARCH) KERNEL_CACHE=build/kernel TOOLBOX=$(TOOLBOX) rootfs/build.sh
RUNNER := target/debug/microvm-local
# x86_64 images end in a snapshot (boot, /ready, /validate, save), as the platform's
# do; every run restores from it. arm64 images boot cold (vsock hot-unplug on
# -M virt is unverified).
ifeq ($(ARCH),x86_64)
SNAPSHOT = $(CARGO) build -q -p microvm-local && $(RUNNER) snapshot-image --image-identifier
else
SNAPSHOT = : no snapshot for $(ARCH)
endif

# Images of Python and Node applications on Debian bases (rootfs/base.sh): x86_64
# only (building a foreign base would need qemu-user for the packages' scripts).
BASES := build/base
BASE_IMAGE := AGENT=$(AGENT) KERNEL_CACHE=build/kernel rootfs/image.sh
PYTHON_APP := examples/python-app
NODE_APP := examples/node-app
BASE_GOALS := base-python base-node python-image node-image
ifneq ($(ARCH),x86_64)
ifneq ($(filter $(BASE_GOALS),$(MAKECMDGOALS)),)
$(error $(filter $(BASE_GOALS),$(MAKECMDGOALS)): base images are x86_64 only, not ARCH=$(ARCH))
endif
endif
X86_64_ONLY = @[ "$(ARCH)" = x86_64 ] || { echo "make $@: base images are x86_64 only, not ARCH=$(ARCH)" >&2; exit 2; }

.PHONY: help setup build app sdk-image rootfs test check-binaries lint run bench clean \
  base-python base-node python-image node-image

help:
	@echo "make setup  - install what the build and tests need (idempotent)"
	@echo "make build  - static, stripped agent: $(AGENT)"
	@echo "             (every target takes ARCH=x86_64, the default, or ARCH=aarch64)"
	@echo "make rootfs - bootable example image: $(IMAGE)/rootfs.ext4 and $(IMAGE)/vmlinuz"
	@echo "             (with busybox as /bin/sh and the usual tools; TOOLBOX= for none)"
	@echo "make sdk-image - an image whose application uses the AWS SDK for Rust: $(SDK_IMAGE)"
	@echo "make base-python, base-node - Debian 12 bases with a runtime: $(BASES)/python, $(BASES)/node (x86_64, root)"
	@echo "make python-image - examples/python-app on the Python base: build/python (and build/python-test, build/python-all)"
	@echo "make node-image - examples/node-app on the Node base: build/node"
	@echo "make run    - boot the example image in QEMU, run it with a payload, suspend, resume, terminate"
	@echo "make test   - unit tests and the PID-1 namespace suites"
	@echo "make lint   - rustfmt and clippy -D warnings"
	@echo "make bench  - benchmarks, written to target/bench/report.md"

setup:
	./scripts/setup.sh

build:
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)
	$(CARGO) build --release --target $(MUSL) -p microvm-agent
	@file $(AGENT) | grep -Eq 'statically linked|static-pie linked' || { echo "$(AGENT) is not static"; exit 1; }
	@ls -l $(AGENT) | awk '{print "agent ($(ARCH)): " $$5 " bytes"}'

# The example application, static like the agent: the guest has no libc.
app:
	$(CARGO) build --release --target $(MUSL) -p hook-sdk --example recorder

rootfs: build app
	$(IMAGE_BUILD) $(AGENT) $(APP) rootfs/example/image.json $(IMAGE)
	$(IMAGE_BUILD) $(AGENT) $(APP) rootfs/test/image.json $(TEST_IMAGE)
	$(SNAPSHOT) $(IMAGE)
	$(SNAPSHOT) $(TEST_IMAGE)

# An image whose application uses the AWS SDK for Rust (examples/sdk-app).
sdk-image: build
	$(CARGO) build --profile sdk-example --target $(MUSL) -p sdk-app
	$(IMAGE_BUILD) $(AGENT) $(SDK_APP) rootfs/sdk/image.json $(SDK_IMAGE)
	$(SNAPSHOT) $(SDK_IMAGE)

# A base is rebuilt only when missing or older than rootfs/base.sh (about 20 s).
$(BASES)/%/base.json: rootfs/base.sh
	$(X86_64_ONLY)
	rootfs/base.sh $* $(BASES)/$*

base-python: $(BASES)/python/base.json
base-node: $(BASES)/node/base.json

# The example three ways: as is; with the tests' probes, from a .zip (the local
# form of codeArtifact.uri); and as root with every capability the guest allows.
python-image: build base-python
	$(X86_64_ONLY)
	$(BASE_IMAGE) $(BASES)/python $(PYTHON_APP) $(PYTHON_APP)/image.json build/python
	rm -f build/python-app.zip
	cd $(PYTHON_APP) && python3 -m zipfile -c $(CURDIR)/build/python-app.zip $$(ls -A)
	$(BASE_IMAGE) $(BASES)/python build/python-app.zip rootfs/python-test/image.json build/python-test
	$(BASE_IMAGE) $(BASES)/python $(PYTHON_APP) rootfs/python-all/image.json build/python-all
	$(SNAPSHOT) build/python
	$(SNAPSHOT) build/python-test
	$(SNAPSHOT) build/python-all

node-image: build base-node
	$(X86_64_ONLY)
	$(BASE_IMAGE) $(BASES)/node $(NODE_APP) $(NODE_APP)/image.json build/node
	$(SNAPSHOT) build/node

# The real-guest suite needs the images of both architectures: a test run never
# skips it for want of one. sdk-app has no tests of its own: compiling the AWS SDK
# once more in the test profile would only cost CI minutes (its image is what the
# suites test). The suites themselves run on this machine, whatever ARCH says.
test:
	$(MAKE) ARCH=x86_64 rootfs sdk-image
	$(MAKE) ARCH=aarch64 rootfs sdk-image
	$(MAKE) check-binaries
	$(MAKE) ARCH=x86_64 python-image node-image
	$(CARGO) test --workspace --exclude sdk-app --no-fail-fast

# What goes into images, for both architectures: static (the guest has no libc) and
# stripped, as `file` sees them.
GUEST_BINARIES := $(foreach a,x86_64 aarch64,target/$(a)-unknown-linux-musl/release/microvm-agent \
  target/$(a)-unknown-linux-musl/release/examples/recorder target/$(a)-unknown-linux-musl/sdk-example/sdk-app)
check-binaries:
	@for b in $(GUEST_BINARIES); do \
	  f=$$(file -b $$b) || exit 1; echo "$$b: $$f"; \
	  echo "$$f" | grep -Eq 'statically linked|static-pie linked' || { echo "$$b is not static" >&2; exit 1; }; \
	  echo "$$f" | grep -q ', stripped' || { echo "$$b is not stripped" >&2; exit 1; }; \
	done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Boot the example image in QEMU and play run-microvm against it (the runner is its
# own crate: `cargo install --path microvm-local` puts it on PATH).
run: rootfs
	$(CARGO) build -q -p microvm-local
	$(RUNNER) run-microvm --image-identifier $(IMAGE) \
	  --run-hook-payload "$${PAYLOAD:-hello from the host}" \
	  --then status,suspend,sleep=2,resume,terminate

# With ARCH=aarch64 only the real-guest figures: the agent cannot run as a process
# on this machine.
bench: rootfs
ifeq ($(ARCH),x86_64)
	$(MAKE) python-image node-image
	$(CARGO) build --release -p hook-sdk --example recorder --example echo
	$(CARGO) run --release -q -p microvm-bench -- --agent $(AGENT) --app target/release/examples/recorder --image $(IMAGE) \
	  --base-image build/python --base-image build/node
else
	$(CARGO) run --release -q -p microvm-bench -- --guest-only --image $(IMAGE) --out target/bench/$(ARCH)
endif

clean:
	$(CARGO) clean

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
IMAGE_BUILD := ARCH=$(ARCH) KERNEL_CACHE=build/kernel rootfs/build.sh
RUNNER := target/debug/microvm-local
# x86_64 images end in a snapshot (boot, /ready, /validate, save), as the platform's
# do; every run restores from it. arm64 images boot cold (vsock hot-unplug on
# -M virt is unverified).
ifeq ($(ARCH),x86_64)
SNAPSHOT = $(CARGO) build -q -p microvm-local && $(RUNNER) snapshot-image --image-identifier
else
SNAPSHOT = : no snapshot for $(ARCH)
endif

.PHONY: help setup build app sdk-image rootfs test check-binaries lint run bench clean

help:
	@echo "make setup  - install what the build and tests need (idempotent)"
	@echo "make build  - static, stripped agent: $(AGENT)"
	@echo "             (every target takes ARCH=x86_64, the default, or ARCH=aarch64)"
	@echo "make rootfs - bootable example image: $(IMAGE)/rootfs.ext4 and $(IMAGE)/vmlinuz"
	@echo "make sdk-image - an image whose application uses the AWS SDK for Rust: $(SDK_IMAGE)"
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

# The real-guest suite needs the images of both architectures: a test run never
# skips it for want of one. sdk-app has no tests of its own: compiling the AWS SDK
# once more in the test profile would only cost CI minutes (its image is what the
# suites test). The suites themselves run on this machine, whatever ARCH says.
test:
	$(MAKE) ARCH=x86_64 rootfs sdk-image
	$(MAKE) ARCH=aarch64 rootfs sdk-image
	$(MAKE) check-binaries
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
	$(CARGO) build --release -p hook-sdk --example recorder --example echo
	$(CARGO) run --release -q -p microvm-bench -- --agent $(AGENT) --app target/release/examples/recorder --image $(IMAGE)
else
	$(CARGO) run --release -q -p microvm-bench -- --guest-only --image $(IMAGE) --out target/bench/$(ARCH)
endif

clean:
	$(CARGO) clean

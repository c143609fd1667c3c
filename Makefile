# Canopy — see README.md. Every target is safe to run twice.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export CANOPY_CACHE ?= /var/cache/canopy
K8S_VERSION ?= v1.35.4
ETCD_VERSION ?= v3.6.16
export CANOPY_ETCD_BIN ?= $(CANOPY_CACHE)/etcd-$(ETCD_VERSION)/etcd
GO_TEST_FLAGS ?=
LAB_NODES ?= 3
# The version the binaries report (canopy version, canopy_build_info, the image's label).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X canopy.io/canopy/internal/agent.Version=$(VERSION)
IMAGE ?= canopy:$(VERSION)

.PHONY: all build deps k8s kube-proxy vm test test-ipvs unit lab lab-down lab-status bench lint clean generate image docs

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/canopy ./cmd/canopy
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/canopy-cni ./cmd/canopy-cni
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/canopy-controller ./cmd/canopy-controller

# The one image (agent, CNI plugin, controller): see Dockerfile. Needs docker (or IMAGE_TOOL=podman).
IMAGE_TOOL ?= docker
image:
	$(IMAGE_TOOL) build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# The generated flag references in docs/configuration.md (the CRDs and their deep copies: make generate).
docs:
	$(GO) test -count=1 ./cmd/canopy ./cmd/canopy-controller -run Docs -update

# Debian packages the tests and the lab use (iproute2, iptables, ipset, frr, gobgpd, ...).
deps:
	@bash hack/install-deps.sh

# The test control plane (kube-apiserver, kube-controller-manager, kubectl, and the etcd they store into),
# built once and cached by version.
k8s:
	@K8S_VERSION=$(K8S_VERSION) bash hack/build-k8s.sh >/dev/null
	@ETCD_VERSION=$(ETCD_VERSION) bash hack/build-etcd.sh >/dev/null

# Everything: unit, integration (real kernel in namespaces) and e2e (the virtual data centre) tests, then the
# IPVS back end's tests on a stock Debian kernel in a qemu VM (this machine's kernel has no IPVS).
test: deps k8s build vm
	CANOPY_BIN=$(BIN)/canopy CANOPY_K8S_BIN=$(CANOPY_CACHE)/k8s-$(K8S_VERSION) CANOPY_E2E_VM_NODE=later \
	  CANOPY_CNI_BIN=$(BIN)/canopy-cni CANOPY_CONTROLLER_BIN=$(BIN)/canopy-controller $(GO) test -count=1 -timeout 40m $(GO_TEST_FLAGS) ./...
	# The lab with a qemu VM node (IPVS end to end) runs alone: an emulated VM starved of CPU soft-locks.
	CANOPY_BIN=$(BIN)/canopy CANOPY_K8S_BIN=$(CANOPY_CACHE)/k8s-$(K8S_VERSION) CANOPY_E2E_VM_NODE=only \
	  CANOPY_CNI_BIN=$(BIN)/canopy-cni CANOPY_CONTROLLER_BIN=$(BIN)/canopy-controller $(GO) test -count=1 -timeout 15m -run '^TestIPVS$$' $(GO_TEST_FLAGS) ./e2e/
	$(GO) test -count=1 -timeout 15m -exec $(BIN)/vmexec $(GO_TEST_FLAGS) ./proxy/ipvs
	$(GO) test -count=1 -timeout 15m -exec $(BIN)/vmexec -run '^TestVM' $(GO_TEST_FLAGS) ./internal/cleanup

# Only the IPVS tests (the back end, and cleanup of its state), in the VM.
test-ipvs: vm
	$(GO) test -count=1 -timeout 15m -exec $(BIN)/vmexec $(GO_TEST_FLAGS) ./proxy/ipvs
	$(GO) test -count=1 -timeout 15m -exec $(BIN)/vmexec -run '^TestVM' $(GO_TEST_FLAGS) ./internal/cleanup

# The VM runner: qemu, a Debian kernel and an initramfs, cached in $(CANOPY_CACHE)/vm.
vm:
	@bash hack/vm/prepare.sh >/dev/null
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/vmexec ./internal/testsupport/vmtest/cmd/vmexec

# Only the fast tests that need neither root nor the lab.
unit:
	$(GO) test -count=1 -short ./...

# A 3-node cluster + FRR ToR + control plane in network namespaces, left running. `make lab-down` removes it.
lab: deps k8s build
	CANOPY_K8S_BIN=$(CANOPY_CACHE)/k8s-$(K8S_VERSION) $(GO) run ./e2e/labctl up -nodes $(LAB_NODES) $(if $(RACKS),-racks $(RACKS)) $(if $(FAMILY),-family $(FAMILY)) -agent $(BIN)/canopy

lab-down:
	$(GO) run ./e2e/labctl down

lab-status:
	$(GO) run ./e2e/labctl status

# Benchmarks: speed targets live here, never in timed tests.
# kube-proxy, built like the control plane and cached next to it (make bench times Canopy's proxy against it).
kube-proxy:
	@K8S_VERSION=$(K8S_VERSION) bash hack/build-kube-proxy.sh >/dev/null

bench: deps k8s kube-proxy build
	CANOPY_BIN=$(BIN)/canopy CANOPY_K8S_BIN=$(CANOPY_CACHE)/k8s-$(K8S_VERSION) CANOPY_CONTROLLER_BIN=$(BIN)/canopy-controller \
	  $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 180m ./...

# The canopy.io CRD types' generated files: api/v1alpha1/zz_generated.deepcopy.go and manifests/crds/*.yaml.
generate:
	bash hack/gen-crds.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN)

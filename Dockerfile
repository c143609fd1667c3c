# syntax=docker/dockerfile:1
#
# Canopy's one image: the node agent (canopy), its CNI plugin (canopy-cni) and the LoadBalancer IP allocator
# (canopy-controller), all in /usr/local/bin, on Debian 12 with the tools the agent runs (iptables, ipset, nft,
# modprobe) and the ones an operator wants on the node (ip, conntrack).
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t canopy:latest .
#
# manifests/daemonset.yaml runs the agent through the ENTRYPOINT (args only) and the init container through
# `sh -c` with modprobe; manifests/controller.yaml runs /usr/local/bin/canopy-controller as user 65532.
# e2e/ship_test.go (TestShipDockerfile, no lab needed) keeps this file honest: every binary the manifests run is
# built here from a cmd/ package, every program the Go code executes comes from a package installed below, and
# every package is pinned.

# The build stage. Pinned by version; add the digest when you publish images
# (`docker buildx imagetools inspect golang:1.26.8-bookworm`), e.g. golang:1.26.8-bookworm@sha256:<digest>.
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ENV CGO_ENABLED=0 GOOS=linux
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X canopy.io/canopy/internal/agent.Version=${VERSION}" -o /out/canopy ./cmd/canopy && \
    go build -trimpath -ldflags "-s -w -X canopy.io/canopy/internal/agent.Version=${VERSION}" -o /out/canopy-cni ./cmd/canopy-cni && \
    go build -trimpath -ldflags "-s -w -X canopy.io/canopy/internal/agent.Version=${VERSION}" -o /out/canopy-controller ./cmd/canopy-controller

# The runtime stage. Pinned by Debian point release; add the digest when you publish images
# (`docker buildx imagetools inspect debian:12.11-slim`), e.g. debian:12.11-slim@sha256:<digest>.
FROM debian:12.11-slim
ARG VERSION=dev
# Package versions are bookworm's as of 2026-11-29 (`apt-cache policy <package>`). Debian removes a version
# from its mirrors when it ships a newer one; the build then fails on the pin: bump it (TestShipDockerfile says
# which, on a Debian 12 machine).
#   iptables   iptables-nft / iptables-legacy and their -save / -restore: the agent picks the back end the host
#              uses (internal/ipt counts the rules of each), so the alternatives stay as Debian sets them
#   ipset      NetworkPolicy peer sets
#   nftables   nft: the nftables service proxy (--proxy-mode=nftables) and cleanup of its table
#   kmod       modprobe: the init container loads br_netfilter and ip_vs; the agent's fallback
#   iproute2   ip, for operators (`kubectl exec … -- ip route show proto 186`); the agent uses netlink
#   conntrack  conntrack, for operators; the agent uses netlink
RUN apt-get update && \
    apt-get install -y --no-install-recommends \
        iptables=1.8.9-2 \
        ipset=7.17-1 \
        nftables=1.0.6-2+deb12u2 \
        kmod=30+20221128-1 \
        iproute2=6.1.0-3 \
        conntrack=1:1.4.7-1+b2 && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/canopy /usr/local/bin/canopy
# canopy-cni next to canopy: the agent's default --cni-plugin, installed into --cni-bin-dir at start.
COPY --from=build /out/canopy-cni /usr/local/bin/canopy-cni
COPY --from=build /out/canopy-controller /usr/local/bin/canopy-controller
LABEL org.opencontainers.image.title="canopy" \
      org.opencontainers.image.description="Canopy: BGP node networking agent, CNI plugin and LoadBalancer IP allocator for Kubernetes" \
      org.opencontainers.image.version="${VERSION}"
# Root by default: the agent needs it for the host files it writes (manifests/daemonset.yaml says why);
# canopy-controller's Deployment runs it as 65532.
ENTRYPOINT ["/usr/local/bin/canopy"]

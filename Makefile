# examlab — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/examlab
STATE_DIR ?= ./var
REDIS_DIR := $(STATE_DIR)/redis
TEST_FLAGS ?= -count=1 -p 1 -timeout 40m
BENCH_FLAGS ?= -run '^$$' -benchtime 5x -timeout 60m

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## install what the platform and its tests need from Debian (redis-server, chromium, xterm.js, debootstrap, docker-compose)
	@./deploy/deps.sh

image: ## build the lab node image examlab/node:bookworm from Debian's packages (skipped if present)
	@./deploy/image/build.sh

web: ## rebuild the committed xterm.js bundle from Debian's node-xterm and libjs-xterm
	@./deploy/web.sh

build: ## build bin/examlab (static: nodes run it as the terminal holder)
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/examlab

COMPOSE ?= $(shell command -v docker-compose >/dev/null 2>&1 && echo docker-compose || echo docker compose)

compose: deps image ## build the container images (no registry) and run examlab and Redis with docker-compose (deploy/compose)
	@GO=$(GO) ./deploy/compose/build.sh
	cd deploy/compose && $(COMPOSE) -p examlab up -d
	@echo "examlab: http://127.0.0.1:$${EXAMLAB_PORT:-8080}/ and /admin; stop: cd deploy/compose && $(COMPOSE) -p examlab down"

redis: ## start a local redis-server with persistence (appendonly) under $(STATE_DIR)/redis
	@./deploy/redis.sh "$(REDIS_DIR)"

run: deps image build redis ## set up and run the whole platform on this host (serve)
	@./deploy/run.sh

test: deps image lint ## lint, then run every test against real Redis and Docker (the CI command)
	$(GO) test $(TEST_FLAGS) ./...

bench: deps image ## print benchmark numbers beside their baselines
	$(GO) test $(BENCH_FLAGS) -bench . ./...

NOMAD ?= nomad
NOMAD_ADDR ?= http://127.0.0.1:4646

nomad-dev: ## run a loopback Nomad dev agent (server + client) from nomad/agent/dev.hcl (nomad on PATH or NOMAD=path; as root)
	$(NOMAD) agent -config nomad/agent/dev.hcl

NOMAD_CLUSTER_DIR ?= $(STATE_DIR)/nomad-cluster
NOMAD_CLUSTER_ADDR ?= http://127.0.0.1:$${NOMAD_CLUSTER_PORT:-4656}

nomad-cluster: ## run one Nomad server and three clients on this machine, state in ./var/nomad-cluster (nomad/agent/cluster.sh; NOMAD=path; as root)
	NOMAD=$(NOMAD) NOMAD_CLUSTER_DIR=$(NOMAD_CLUSTER_DIR) ./nomad/agent/cluster.sh start

nomad-cluster-stop: ## stop the agents make nomad-cluster started
	NOMAD=$(NOMAD) NOMAD_CLUSTER_DIR=$(NOMAD_CLUSTER_DIR) ./nomad/agent/cluster.sh stop

test-nomad-cluster: image build ## run the three-client suite (a client killed mid-exam) against make nomad-cluster's cluster
	NOMAD_ADDR=$(NOMAD_CLUSTER_ADDR) EXAMLAB_NOMAD_CLUSTER=1 NOMAD_CLUSTER_DIR=$(abspath $(NOMAD_CLUSTER_DIR)) \
		EXAMLAB_NOMAD_LABNET=$(abspath $(BIN)) $(GO) test -count=1 -timeout 20m -run Cluster -v ./nomad

NOMAD_DEPLOY_DIR := /var/lib/examlab/dev-deploy
EXAMLAB_ON_CLIENTS ?= /usr/local/bin/examlab

nomad-dev-deploy: ## the dev agent with the host volumes deploy/nomad's jobs mount (nomad/agent/dev-deploy.hcl; as root)
	install -d -o nobody -g $$(id -gn nobody) $(NOMAD_DEPLOY_DIR)/state $(NOMAD_DEPLOY_DIR)/redis
	$(NOMAD) agent -config nomad/agent/dev.hcl -config nomad/agent/dev-deploy.hcl

test-nomad-deploy: image ## deploy Redis, api, worker and relay as Nomad jobs on the agent at NOMAD_ADDR (examlab at EXAMLAB_ON_CLIENTS) and run a session through them
	NOMAD_ADDR=$(NOMAD_ADDR) EXAMLAB_NOMAD_DEPLOY=1 EXAMLAB_NOMAD_LABNET=$(EXAMLAB_ON_CLIENTS) \
		$(GO) test -count=1 -timeout 30m -run Deployment -v ./deploy/nomad

test-nomad: image build ## run the Nomad runtime's suite against the agent at NOMAD_ADDR (default: make nomad-dev's)
	NOMAD_ADDR=$(NOMAD_ADDR) EXAMLAB_NOMAD_LABNET=$(abspath $(BIN)) $(GO) test -count=1 -timeout 20m -run Real -v ./nomad

lint: ## go vet, gofmt and staticcheck (make test runs it first)
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed (make fmt):"; echo "$$out"; exit 1; fi
	$(GO) tool staticcheck ./...

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

clean: ## remove build output (not the state directory)
	rm -rf bin

.PHONY: help deps image web build compose redis run test bench lint fmt clean nomad-dev test-nomad nomad-cluster nomad-cluster-stop test-nomad-cluster nomad-dev-deploy test-nomad-deploy

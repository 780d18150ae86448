# swift-hotplug: the two quick-start targets are `make` (install what is missing, run the torture test) and `make test`;
# `make quick-start` runs the README's Usage code (Examples/quick-start) and checks the README's copy of it.
SWIFT   ?= swift
SECONDS ?= 10
HTTP_SECONDS ?= 300
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps run demo quick-start test tsan bench http-load vm clean

all: run

# libnuma-dev (headers and pkg-config file for the CNuma system library) from Debian's packages, when missing.
deps:
	@if ! pkg-config --exists numa 2>/dev/null || [ ! -f /usr/include/numa.h ]; then \
		echo "installing libnuma-dev"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libnuma-dev pkg-config; \
	fi

# The main job: hotplug-torture on every CPU this process may use: tasklet storms, slab churn, cross-calls, SIGP
# orders and stop_machine while CPUs are attached and detached with injected failures; every invariant checked.
run: deps
	$(SWIFT) run -c release hotplug-torture --seconds $(SECONDS)

# The SIGP demo: every modelled order against CPUs in every lifecycle state, checked.
demo: deps
	$(SWIFT) run -c release sigp-demo --seconds $(SECONDS)

# The README's Usage code as a program, and the check that the README shows exactly that file.
quick-start: deps
	bash Scripts/check-readme-example
	$(SWIFT) run -c release quick-start

test: deps
	$(SWIFT) test

tsan: deps
	$(SWIFT) test --sanitize=thread

# Concurrency Kit (libck-dev) is an optional peer of the barrier figure; jemalloc (libjemalloc-dev) and tcmalloc
# (libgoogle-perftools-dev) are optional peers of the slab figures.
bench: deps
	@dpkg -s libck-dev >/dev/null 2>&1 || { $(SUDO) apt-get install -y -qq libck-dev || echo "libck-dev unavailable: ck barriers skipped"; }
	@dpkg -s libjemalloc-dev >/dev/null 2>&1 || { $(SUDO) apt-get install -y -qq libjemalloc-dev || echo "libjemalloc-dev unavailable: jemalloc peer skipped"; }
	@dpkg -s libgoogle-perftools-dev >/dev/null 2>&1 || { $(SUDO) apt-get install -y -qq libgoogle-perftools-dev || echo "libgoogle-perftools-dev unavailable: tcmalloc peer skipped"; }
	@mkdir -p bench-results
	cd Benchmarks && $(SWIFT) run -c release hotplug-peers --json ../bench-results/peers.json

# elastic-http (Hummingbird) under wrk while its CPU quota changes every 2 s, logical CPUs then the global executor:
# every write checked, the server must follow. HTTP_SECONDS=300 gives over 100 resizes; CI runs HTTP_SECONDS=30.
# wrk from Debian's packages, when missing.
http-load: deps
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }
	cd Examples/elastic-http && $(SWIFT) build -c release
	bash Examples/elastic-http/load.sh --seconds $(HTTP_SECONDS)

# VM harness: numa-placement and hotplug-torture --follow in a 2-node NUMA QEMU guest (kernel hotplug, cgroup, taskset).
vm: deps
	SWIFT=$(SWIFT) bash Scripts/vm-test

clean:
	rm -rf .build Benchmarks/.build bench-results

# Two entry points for a new machine (Debian 12, Python 3.11):
#   make demo   — install, then run the simulator with the agent (armoire sim)
#   make test   — install, then ruff, mypy and pytest
# Both create .venv, install the project into it, and make sure mosquitto is
# there (apt-get when run as root, otherwise they say what to run and exit 2); `make test`
# also installs tmux for the live-view test and net-snmp's tools (Debian "snmp") for the
# SNMP cross-check (each skipped, saying why, without it).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
# pytest-xdist workers for make test / make integration (README, dependencies); an idle
# worker takes pending tests from the busy one (worksteal), so the slow ones do not queue.
JOBS   ?= 2

.PHONY: iomodule-lib bench-iomodule bench-cameras demo test lint typecheck unit integration bench bench-hostile bench-same-load soak mutate install mosquitto tmux snmp clean sim-image

demo: install mosquitto iomodule-lib
	$(BIN)/armoire sim $(ARGS)

test: install mosquitto tmux snmp iomodule-lib lint typecheck
	$(BIN)/pytest -q -n $(JOBS) --dist worksteal $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install iomodule-lib
	$(BIN)/pytest -q tests/unit

integration: install mosquitto tmux snmp iomodule-lib
	$(BIN)/pytest -q -n $(JOBS) --dist worksteal tests/integration tests/sim

bench: install mosquitto
	$(BIN)/python bench/steady_state.py

# A local attacker floods the gateway's command topic for 30 s (issue 7); prints figures.
bench-hostile: install mosquitto
	$(BIN)/python bench/hostile.py $(ARGS)

# The same-load race of issue 10 (bench/same_load.py), e.g. make bench-same-load ARGS="--quick"
bench-same-load: install mosquitto
	$(BIN)/python bench/same_load.py --units 50 200 $(ARGS)

# Cabinet I/O: contact -> alarm committed (I/O module firmware and GPIO), codec frames/s.
bench-iomodule: install iomodule-lib
	$(BIN)/python bench/iomodule.py $(ARGS)

# Cameras (issue 14): tamper -> alarm committed, -> still acknowledged; RSS with 4 cameras.
bench-cameras: install mosquitto
	$(BIN)/python bench/cameras.py $(ARGS)

# Link-fault soak (bench/soak.py), e.g. make soak ARGS="--duration 3600"
soak: install mosquitto
	$(BIN)/python bench/soak.py $(ARGS)

# Mutation testing of the safety core (scripts/mutate.py): minutes per module, niced;
# prints each module's kill rate and surviving mutants. Not part of `make test`.
# make mutate ARGS="outbox codec" for some modules.
mutate: install mosquitto
	$(BIN)/python scripts/mutate.py $(ARGS)

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@sh scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[sim,test]'
	@touch $(STAMP)

# The Dockerfile.sim image, built with podman (as root; minutes), then the demo and the
# tests run inside it. Not part of `make test`.
sim-image:
	sh scripts/build-sim-image.sh --run

# micropython-lib packages of the I/O module firmware (board/iomodule/lib, gitignored):
# pinned versions and hashes, fetched from PyPI's JSON API at build time, never at run time.
iomodule-lib: install
	$(BIN)/python scripts/fetch-micropython-lib.py

mosquitto:
	@sh scripts/ensure-mosquitto.sh

tmux:
	@sh scripts/ensure-tmux.sh

snmp:
	@sh scripts/ensure-snmp.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis

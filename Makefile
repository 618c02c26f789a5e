# Two entry points for a new machine (Debian 12, Python 3.11):
#   make demo   — install, then run the simulator with the agent (armoire sim)
#   make test   — install, then ruff, mypy and pytest
# Both create .venv, install the project into it, and make sure mosquitto is
# there (apt-get when run as root, otherwise they say what to run and exit 2); `make test`
# also installs tmux for the live-view test (skipped, saying why, without it).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: demo test lint typecheck unit integration bench bench-hostile soak mutate install mosquitto tmux clean sim-image

demo: install mosquitto
	$(BIN)/armoire sim $(ARGS)

test: install mosquitto tmux lint typecheck
	$(BIN)/pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install mosquitto tmux
	$(BIN)/pytest -q tests/integration tests/sim

bench: install mosquitto
	$(BIN)/python bench/steady_state.py

# A local attacker floods the gateway's command topic for 30 s (issue 7); prints figures.
bench-hostile: install mosquitto
	$(BIN)/python bench/hostile.py $(ARGS)

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

mosquitto:
	@sh scripts/ensure-mosquitto.sh

tmux:
	@sh scripts/ensure-tmux.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Everything from nothing: `make demo` runs the end-to-end demo on a local chain,
# `make test` runs the whole suite (local test chain, then anvil).
# One Python, 3.12, for the plugin's environment and the job stack's (two environments: eth-ape
# holds the plugin's at numpy<2, the jobs' has numpy 2): python3.12 on PATH, else pyenv's.
PYTHON ?= $(shell python3.12 -c '' 2>/dev/null && echo python3.12 || \
	ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -1)
ANVIL_VERSION := 1.7.1
VENV := .venv
TOOLS := .tools
# The job stack of cpu-portable and cpu-exact (crowdml_compute/jobenv.py): its own environment
# of the same Python, with jax and numpy 2, under `crowdml: job_env_folder:` (.jobenv here).
JOB_STACK := jax0.11.2-py3.12
JOB_ENV := .jobenv/$(JOB_STACK)
STACKS := crowdml_compute/stacks
# ape-vyper finds the pinned, pip-installed compiler on PATH; anvil comes from npm.
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/$(TOOLS)/node_modules/.bin:$(PATH)

# Tests whose behaviour depends on the node carry the `anvil` marker and also run on anvil
# (ethereum:local:foundry): window edges, pending-block simulation, a worker from an installed
# wheel, separate processes, the console. Separate processes on anvil are also what
# tests/integration (own anvil, block time) and tests/fork play end to end;
# CROWDML_ANVIL_ALL=1 runs every chain suite (board/, plugin/) on anvil.
ANVIL_TESTS := $(if $(CROWDML_ANVIL_ALL),tests/board tests/plugin,tests -m anvil)

.PHONY: all env lock stack-locks agreement device-wheels demo test test-full test-compute test-local test-anvil test-fork bench taskboard clean

all: test

# Every package from the lock, each checked against its hash; then the plugin itself, built
# with the locked setuptools (no isolated build env fetching an unpinned one).
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "ERROR: no Python 3.12 found; name one: make PYTHON=/path/to/python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --require-hashes --no-deps -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# After editing pyproject.toml's dependencies: pin everything again, with hashes.
lock:
	$(PYTHON) -m venv .cache/pip-tools
	.cache/pip-tools/bin/pip install --quiet pip-tools==7.6.2
	.cache/pip-tools/bin/pip-compile --quiet --generate-hashes --allow-unsafe --all-extras --all-build-deps \
		--strip-extras -o requirements.lock pyproject.toml

# The job stack's environment, built by the plugin's own command (which then checks it against
# the profile's pins, as a worker does before a deposit).
$(JOB_ENV)/.installed: $(STACKS)/$(JOB_STACK).txt $(VENV)/.installed
	rm -rf $(JOB_ENV)
	ape crowdml job-env create $(JOB_STACK) --python $$(command -v $(PYTHON))
	touch $@

# After editing a stack's .in file: pin it again, with hashes, for that stack's Python.
stack-locks:
	$(PYTHON) -m venv .cache/pip-tools-jobs
	.cache/pip-tools-jobs/bin/pip install --quiet pip-tools==7.6.2
	for stack in $(STACKS)/*.in; do \
		.cache/pip-tools-jobs/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
			--strip-extras -o $${stack%.in}.txt $$stack || exit 1; done

# The compute package's own tests (tests/compute) import jax, so they run on the job stack: in a
# venv of the stack's Python that holds pytest (from the lock, hash-checked) and reads the job
# environment's packages and this checkout through a .pth file. The job environment itself
# stays exactly its lock.
JOB_TESTS := .jobenv/tests-$(JOB_STACK)
TEST_TOOLS := pytest pluggy iniconfig packaging hypothesis sortedcontainers attrs
$(JOB_TESTS)/.installed: $(JOB_ENV)/.installed requirements.lock
	rm -rf $(JOB_TESTS)
	$(JOB_ENV)/bin/python -m venv $(JOB_TESTS)
	$(JOB_ENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > $(JOB_TESTS)/paths.txt
	echo $(CURDIR) >> $(JOB_TESTS)/paths.txt
	mv $(JOB_TESTS)/paths.txt $$($(JOB_TESTS)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/job-env.pth
	$(VENV)/bin/python -c "import re, sys; names = set(sys.argv[2:]); \
		blocks = re.split(r'\n(?=[A-Za-z0-9])', open(sys.argv[1]).read()); \
		print('\n'.join(b for b in blocks if b.split('==')[0].lower() in names))" \
		requirements.lock $(TEST_TOOLS) > $(JOB_TESTS)/tools.txt
	$(JOB_TESTS)/bin/pip install --quiet --require-hashes --no-deps -r $(JOB_TESTS)/tools.txt
	touch $@

$(TOOLS)/node_modules/.bin/anvil:
	npm install --silent --prefix $(TOOLS) @foundry-rs/anvil@$(ANVIL_VERSION)

# anvil is linked into the venv too, so that `source .venv/bin/activate` finds it.
$(VENV)/bin/anvil: $(TOOLS)/node_modules/.bin/anvil $(VENV)/.installed
	ln -sf $(CURDIR)/$(TOOLS)/node_modules/.bin/anvil $@

env: $(VENV)/.installed $(JOB_ENV)/.installed $(JOB_TESTS)/.installed \
	$(TOOLS)/node_modules/.bin/anvil $(VENV)/bin/anvil

demo: env
	ape crowdml demo

test: env test-compute test-local test-anvil test-fork

# Everything the variables keep out of `make test` (README, Developing), in one run.
test-full: env
	CROWDML_SLOW=1 CROWDML_EXACT_MATRIX=1 CROWDML_INTEGRATION_ALL=1 CROWDML_PARALLEL_FULL=1 \
		CROWDML_WALKTHROUGH=1 CROWDML_ANVIL_ALL=1 CROWDML_LOAD_TASKS=5 $(MAKE) test

# The compute package alone, in its job stack (jax in process); tests/conftest.py is the chain
# side's and is not read.
test-compute: env
	$(JOB_TESTS)/bin/python -m pytest tests/compute --confcutdir=tests/compute -q --durations=5

# The suites run on TEST_PROCESSES processes (pytest-xdist), a test file each at a time: most
# of a test's time is one core's (ape, the chain, a job pinned to one CPU).
TEST_PROCESSES ?= 2
XDIST := -n $(TEST_PROCESSES) --dist loadfile

test-local: env
	ape test tests -q $(XDIST) --durations=15

test-anvil: env
	ape test $(ANVIL_TESTS) -q $(XDIST) --durations=10 --network ethereum:local:foundry

# Tasks started on a chain (a second anvil with chain id 1, as ethereum:mainnet's node) and
# finished on its fork, the way ape users test against mainnet; other networks skip tests/fork.
test-fork: env
	ape test tests/fork -q --durations=5 --network ethereum:mainnet-fork:foundry

bench: env
	python bench/gas.py 2>/dev/null | grep -v '^INFO'
	python bench/train.py
	python bench/exact.py
	python bench/parallel.py
	python bench/rehearsal.py

# The digests of fixed specs on this machine, to compare with another's (bench/agreement.py),
# run in the job environment with crowdml's packages linked onto its path.
agreement: env
	mkdir -p .cache/stage
	ln -sfn $(CURDIR)/crowdml_compute .cache/stage/crowdml_compute
	ln -sfn $(CURDIR)/jobs .cache/stage/crowdml_jobs
	PYTHONPATH=$(CURDIR)/.cache/stage $(JOB_ENV)/bin/python -s bench/agreement.py

# What a lent GPU machine's image lacks of the job stack (bench/device_agreement.sh), as
# Python 3.12 wheels to carry there; versions from the cpu-exact stack's lock.
DEVICE_WHEELS := pydantic pydantic-core annotated-types typing-inspection eth-hash pycryptodome \
	flax optax
device-wheels:
	rm -rf .cache/device-wheels
	$(VENV)/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_27_x86_64 -d .cache/device-wheels \
		$$(for p in $(DEVICE_WHEELS); do grep -iE "^$$p==" $(STACKS)/$(JOB_STACK).txt | cut -d' ' -f1; done)

# After editing contracts/*.vy: ship the new bytecode with the plugin.
taskboard: env
	ape compile --force  # ape's cache once kept a merged contract's old bytecode
	ape run export_taskboard
	ape run export_purchase

clean:
	rm -rf $(VENV) $(TOOLS) .jobenv .build

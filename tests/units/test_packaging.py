"""One source of truth for dependencies: pyproject.toml names them by role, requirements.lock pins
every package (indirect ones too) with hashes, and the two must agree; the job stack equals the
cpu-exact profile's pins, and ape-config.yaml installs the same plugin versions."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from crowdml_compute.profile import PROFILES

ROOT = Path(__file__).resolve().parents[2]
LOCK_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared() -> list[Requirement]:
    project = pyproject()
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [Requirement(line) for line in lines]


def parse_lock(text: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every pinned entry of a pip-compile lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in text.splitlines():
        match = LOCK_LINE.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            current = None
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[str, int]]:
    return parse_lock((ROOT / "requirements.lock").read_text())


def disagreements(requirements: list[Requirement], lock: dict) -> list[str]:
    problems = []
    for requirement in requirements:
        pinned = lock.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{requirement} but the lock pins {pinned[0]}")
    return problems


def test_every_declared_dependency_is_locked_at_a_version_it_allows(lock):
    assert disagreements(declared(), lock) == [], "run `make lock`"


def test_a_drifted_pin_is_caught(lock):
    # The check above can fail: a pyproject pin the lock does not hold is reported.
    drifted = [Requirement("jax==0.7.2"), Requirement("not-a-package>=1")]
    assert len(disagreements(drifted, lock)) == 2


def test_every_locked_package_is_exact_and_hashed(lock):
    assert len(lock) > 50  # indirect dependencies (web3, eth-abi, pydantic-core, …) are pinned
    for name in ("web3", "eth-abi", "pydantic-core"):
        assert name in lock
    unhashed = [name for name, (_, hashes) in lock.items() if hashes == 0]
    assert unhashed == []


@pytest.mark.parametrize("profile", list(PROFILES.values()),
                         ids=lambda p: p.name)
def test_each_job_stack_lock_holds_its_profiles_pins_with_hashes(profile):
    from crowdml_compute.jobenv import get_stack

    stack = get_stack(profile.stack)
    locked = parse_lock(stack.lock.read_text())
    assert locked and all(hashes > 0 for _, hashes in locked.values())
    for name, version in profile.packages.items():
        assert locked[canonicalize_name(name)][0] == version, name
    assert profile.python == stack.python
    # Every requirement of the .in it was compiled from is in the lock.
    inputs = [Requirement(line) for line in stack.lock.with_suffix(".in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert disagreements(inputs, locked) == []


def test_ape_config_installs_the_pinned_plugins():
    dev = {canonicalize_name(r.name): str(r.specifier)
           for r in map(Requirement, pyproject()["optional-dependencies"]["dev"])}
    plugins = yaml.safe_load((ROOT / "ape-config.yaml").read_text())["plugins"]
    assert plugins, "ape-config.yaml lists no plugins"
    for plugin in plugins:
        assert f"=={plugin['version']}" == dev[canonicalize_name(f"ape-{plugin['name']}")]


def test_the_plugin_pulls_no_jax():
    """`pip install ape-crowdml` (any extra) and the plugin's lock hold no jax stack: jobs, and
    whatever needs their code, run in the job environments."""
    numeric = {"jax", "jaxlib", "flax", "optax", "ml-dtypes", "jax-cuda12-plugin",
               "jax-cuda13-plugin"}
    assert {canonicalize_name(r.name) for r in declared()} & numeric == set()
    assert set(parse_lock((ROOT / "requirements.lock").read_text())) & numeric == set()

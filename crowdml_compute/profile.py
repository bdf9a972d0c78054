"""Environment profiles: what a worker's process must look like for results to agree bit for bit.

Two kinds. The portable profiles (`cpu-portable`, the default, and `gpu-portable`) run only
jobs with exact arithmetic (exact.py: every sum whose order a kernel chooses is a sum of
integers), so they pin no thread count, CPU affinity, ISA or device count: only the job stack
(the compiler of the elementwise operations) and, on CPU, the AVX2+FMA feature floor. The
float profiles (`cpu-exact`, `gpu-exact`) run plain float32 jobs, whose sums follow the
machine; what follows is what they pin and why.

A profile pins its job stack (jobenv.py: the interpreter and hash-locked packages the job runs
in), package versions and the native jaxlib build, the plugin's own compute code, the platform,
the job process's CPU count, XLA flags, environment variables and JAX/flax config. The runner
starts every job in a fresh child process of the stack's interpreter: `apply_environment` pins its CPU affinity and
replaces its whole environment with `environment_for(profile)` before jax is imported (XLA reads
XLA_FLAGS and sizes its thread pools once, when its backend starts; jax and flax read their
variables at import).

What was measured (jaxlib 0.7.1 on a 2-core AVX-512 Xeon, L1d 48 KiB; README "Agreement across
machines" has the figures). On jaxlib 0.11.2 (cpu-exact's stack now) the same matmuls and sums
kept their bits across thread counts and ISA caps on that machine, while a whole MNIST-shaped
job unpinned still differed between 1 and 2 CPUs, so the pins below all stay:

- Thread count. XLA CPU's intra-op pool has `PJRT_NPROC` (else `NPROC`, else the process's
  allowed-CPU count) threads, and a dot shards its Eigen contraction by that count, which can split
  the summed dimension: `a @ b` at 64×784×128, 256×784×512, 64×1024×64 and 32×16384×32 gives
  other bits with 2 threads than with 1, as does a jitted sum over 2**24 floats. The bits follow
  the pool size, not the cores: PJRT_NPROC=1 on two cores gives the one-core bits, PJRT_NPROC=2 on
  one core the two-core bits. `--xla_cpu_multi_thread_eigen=false` changes nothing. Virtual
  CPU devices enlarge the pool to max(PJRT_NPROC, devices) threads, so `xla_threads` pins
  PJRT_NPROC at the most devices a job may use (cpu-exact: 8; parallel.py), and `cpu_threads`
  the job's CPUs per device (the bits do not follow the CPUs); a machine allowing the job fewer
  than cpu_threads CPUs is refused.
- Inherited variables. JAX_*, FLAX_*, EAGER_CONSTANT_FOLDING, PJRT_NPROC/NPROC,
  TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL, DNNL_/ONEDNN_MAX_CPU_ISA and an inherited or shared
  persistent compilation cache each change the digest or crash the job, so the child's
  environment is built from an allowlist (ALLOWED_VARIABLES) plus the profile's own variables.
- ISA. `--xla_cpu_max_isa=AVX2` keeps XLA's generated code from using AVX-512 (capping at AVX2 or
  AVX512 kept a 300-step MLP's bytes and the bits of exp/log/tanh/log_softmax; AVX changed them).
  It does not reach matmuls: XLA runs f32 dots as an Eigen contraction whose kernel is oneDNN's
  sgemm, and oneDNN picks that kernel from the CPU it runs on (DNNL_MAX_CPU_ISA=AVX2 changes the
  bits of a 32×16384×32 product on this AVX-512 machine). DNNL_MAX_CPU_ISA=AVX2 pins it.
- Vector width. `--xla_cpu_prefer_vector_width=128` changes log_softmax's bits; the default
  (256) is set explicitly rather than left to the host CPU's tuning.
- CPU model (not pinnable, see README): the contraction cuts the summed dimension into blocks
  (here a 64×1024×64 product equals, bit for bit, the sum of four 256-wide slices), and Eigen
  sizes those blocks from the cache sizes cpuid reports. Two CPUs with the same ISA cap and thread
  count but other caches may cut elsewhere once a contracted dimension exceeds one block; neither
  XLA nor Eigen has a switch for that. The canary, run at the job's real shapes, is the guard.

gpu-exact: deterministic GPU ops (no atomics-ordered reductions), TF32 off, highest matmul
precision, one GPU model (`device_kind`) and the CUDA runtime, cuDNN and cuBLAS builds it loads
(GPU kernels and their autotuned choices differ between GPU models and library versions); never
run on a GPU here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform as _platform
import shutil
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .digest import keccak_digest
from .errors import EnvironmentMismatch

# The profiles are data: one JSON file per profile in profiles/ (shipped with the package, outside
# the code hash), each a Profile without its `code`, which is this package's own code hash. A
# new GPU model or stack is a new file: no code changes, and specs already published stay valid.
PROFILES_FOLDER = Path(__file__).parent / "profiles"
# What the job's process may inherit from the worker's environment. Everything else is dropped:
# JAX_*, FLAX_*, XLA_*, TF_*, PJRT_NPROC, DNNL_*, cache folders, … Remote data credentials pass
# (the data's digest is checked whatever serves it).
ALLOWED_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TERM",
    "PYTHONPATH", "APE_CROWDML_CACHE_FOLDER", "APE_CROWDML_MAX_DATA_BYTES",
    "APE_CROWDML_FETCH_SECONDS",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
ALLOWED_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
# Set by jax itself when it is imported (logging level; "not a Cloud TPU").
SET_BY_JAX = frozenset({"TF_CPP_MIN_LOG_LEVEL", "TPU_SKIP_MDS_QUERY"})
# The CUDA libraries' versions as jax's CUDA plugin reads them from the loaded libraries
# (`jax._src.lib.cuda_versions`), by the name a profile pins them under (`gpu_libraries`).
GPU_LIBRARY_VERSIONS = {"cuda": "cuda_runtime_get_version", "cudnn": "cudnn_get_version",
                        "cublas": "cublas_get_version"}


@functools.cache
def compute_code_digest() -> str:
    """keccak256 over this package's sources (each module's path within it, length, bytes, in
    path order), 0x-hex: the package's own code hash, with no list to keep. Read once per
    process: the built-in profiles and every check need it, and the sources do not change under
    a running process."""
    package = Path(__file__).parent
    return _files_digest([(path.relative_to(package).as_posix(), path)
                          for path in sorted(package.rglob("*.py"))])


def _files_digest(files: list[tuple[str, Path]], prefix: bytes = b"") -> str:
    """keccak256 of `prefix`, then each (name, file) as its name, length and bytes, 0x-hex."""
    parts = [prefix]
    for name, path in files:
        data = path.read_bytes()
        parts += [name.encode(), len(data).to_bytes(8, "little"), data]
    return "0x" + keccak_digest(b"".join(parts)).hex()


@functools.cache
def install_digest() -> str:
    """keccak256 over the compute code's hash and the data files a worker's checks read (the
    profiles and the stacks' locks), 0x-hex: what an upgrade changes when it changes what this
    install accepts, data included (a new pin changes no code)."""
    from .jobenv import STACKS_FOLDER

    data = sorted([*PROFILES_FOLDER.glob("*.json"), *STACKS_FOLDER.glob("*.txt")])
    return _files_digest([(path.name, path) for path in data], compute_code_digest().encode())


class Profile(BaseModel):
    """A pinned environment. Part of the job spec, so part of the on-chain spec digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    stack: str  # the job stack whose interpreter runs the job (jobenv.py)
    platform: str  # the jax backend: "cpu" or "gpu"
    machine: str  # platform.machine() of workers, e.g. "x86_64"
    python: str  # major.minor of the job's interpreter (the native pins are per wheel)
    cpu_features: tuple[str, ...] = ()  # /proc/cpuinfo flags the capped ISA needs
    packages: dict[str, str]
    native: dict[str, str] = {}  # site-packages path -> sha256 of the native library
    code: str  # compute_code_digest() of the plugin that made the spec
    cpu_threads: int | None = Field(None, gt=0)  # CPUs of the job per device; None: unpinned
    # XLA CPU's intra-op pool (PJRT_NPROC), whose size the bits follow; also the most (virtual)
    # devices a job may use, as more would enlarge the pool (parallel.py). None: cpu_threads.
    xla_threads: int | None = Field(None, gt=0)
    device_kind: str | None = None  # every GPU's jax device_kind, e.g. "NVIDIA H100 80GB HBM3"
    gpu_libraries: dict[str, int] = {}  # GPU_LIBRARY_VERSIONS name -> version the library reports
    xla_flags: tuple[str, ...]
    env: dict[str, str] = {}
    jax_config: dict[str, str | bool | int] = {}
    flax_config: dict[str, str | bool | int] = {}
    # Jobs under this profile must compute with exact arithmetic (crowdml_compute/exact.py): their sums
    # then have one result whatever the thread pool, CPU, ISA or device count, so the profile
    # pins none of them.
    requires_exact: bool = False


def load_profiles(folder: Path = PROFILES_FOLDER) -> dict[str, Profile]:
    """The profiles of `folder`'s JSON files by name (a file's name is its profile's), each
    carrying this package's code hash."""
    profiles = {}
    for path in sorted(folder.glob("*.json")):
        profile = Profile.model_validate({**json.loads(path.read_text()),
                                          "code": compute_code_digest()})
        if profile.name != path.stem:
            raise EnvironmentMismatch(f"{path} holds profile {profile.name!r}, not {path.stem!r}")
        profiles[profile.name] = profile
    return profiles


# cpu-portable and gpu-portable run exact jobs only (exact.py: every sum whose order a kernel
# chooses is a sum of integers), so they keep JAX's default flags, use every core and any device
# count, and pin what still decides elementwise bits: the job stack (jaxlib's build, which
# generates exp, log, sqrt) and, on CPU, the FMA instructions that build may fuse multiplies and
# adds into; gpu-portable keeps the host CPU platform, where exact jobs initialise their
# parameters (exact.init_on_host) so erf_inv's GPU rounding never reaches the digest. cpu-exact
# and gpu-exact run float jobs and pin what the module docstring says; cpu-exact's XLA pool has
# 8 threads, so a job may run on 1, 2, 4 or 8 virtual CPU devices with any other count's bits.
PROFILES = load_profiles()
# A spec's profile when the requester names none: cpu-portable for a job with exact arithmetic
# (it pins no machine), else cpu-exact (spec.make_spec); both run on one job stack.
DEFAULT_PROFILE, DEFAULT_FLOAT_PROFILE = "cpu-portable", "cpu-exact"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise EnvironmentMismatch(
            f"unknown environment profile {name!r}; known: {', '.join(PROFILES)}"
        ) from None


def _difference(given, builtin) -> str:
    """The entries of two field values that differ, for a one-line message."""
    if isinstance(given, dict) and isinstance(builtin, dict):
        keys = sorted(k for k in given.keys() | builtin.keys() if given.get(k) != builtin.get(k))
        return ", ".join(f"{k}: {given.get(k)!r}, built in {builtin.get(k)!r}" for k in keys)
    return f"{given!r}, built in {builtin!r}"


def check_profile(profile: Profile, accepted: tuple[Profile, ...] | list[Profile] = ()) -> None:
    """Refuse a profile that is not, field for field, a built-in one or one in `accepted` (the
    worker's own list): a profile named cpu-exact with weaker flags would otherwise pass."""
    if profile == PROFILES.get(profile.name) or profile in accepted:
        return
    builtin = PROFILES.get(profile.name)
    if builtin is None:
        raise EnvironmentMismatch(f"profile {profile.name!r} is neither built in nor accepted "
                                  "by this worker")
    fields = [f for f in Profile.model_fields if getattr(profile, f) != getattr(builtin, f)]
    hint = " (made by another crowdml version?)" if fields == ["code"] else ""
    raise EnvironmentMismatch(
        f"profile {profile.name} differs from the built-in one in {fields[0]} "
        f"({_difference(getattr(profile, fields[0]), getattr(builtin, fields[0]))}){hint}; "
        "refusing it"
    )


def environment_for(profile: Profile, parent: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of the job's process: the allowlisted part of `parent` (default:
    this process's), then the profile's variables, XLA_FLAGS and the XLA thread count."""
    parent = os.environ if parent is None else parent
    env = {name: value for name, value in parent.items()
           if name in ALLOWED_VARIABLES or name.startswith(ALLOWED_PREFIXES)}
    env.update(profile.env)
    env["XLA_FLAGS"] = " ".join(profile.xla_flags)
    threads = profile.xla_threads or profile.cpu_threads
    if threads is not None:
        env["PJRT_NPROC"] = str(threads)  # XLA CPU's intra-op pool size
    return env


def job_cpus(profile: Profile, devices: int = 1) -> int | None:
    """The most CPUs the job's process is pinned to: cpu_threads per virtual CPU device (on GPU
    the host side needs cpu_threads). The bits follow the XLA pool's size, not the CPUs, so
    fewer (down to cpu_threads) only run the devices slower."""
    if profile.cpu_threads is None:
        return None
    return profile.cpu_threads * (devices if profile.platform == "cpu" else 1)


def _check_cpu_count(profile: Profile) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    if profile.cpu_threads is not None and len(allowed) < profile.cpu_threads:
        raise EnvironmentMismatch(
            f"profile {profile.name} runs jobs on {profile.cpu_threads} CPUs, this process may "
            f"use {len(allowed)}"
        )
    return allowed


def apply_environment(profile: Profile, devices: int = 1) -> None:
    """In the job's own process, before jax is imported: pin the CPU affinity to the profile's
    CPU count (per device) and replace the whole environment with `environment_for(profile)`."""
    if "jax" in sys.modules or "flax" in sys.modules:
        raise EnvironmentMismatch(
            "jax was imported before the profile was applied; run the job in a fresh process"
        )
    allowed = _check_cpu_count(profile)
    if profile.cpu_threads is not None:
        # Threads started later (XLA's pools) inherit the calling thread's affinity.
        os.sched_setaffinity(0, allowed[: job_cpus(profile, devices)])
    sealed = environment_for(profile)
    os.environ.clear()
    os.environ.update(sealed)


def _cpu_flags() -> set[str] | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _sha256(path: Path) -> str:
    """sha256 of a file. libjax_common.so is 336 MB (about a second), so digests are kept in
    <cache folder>/native-sha256.json under the file's path, inode, size and mtime: a file
    replaced or rewritten is hashed again."""
    from .data import cache_folder

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_folder().parent / "native-sha256.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    known[key] = hasher.hexdigest()
    store.parent.mkdir(parents=True, exist_ok=True)
    partial = store.with_suffix(f".{os.getpid()}.part")
    partial.write_text(json.dumps(known, indent=1, sort_keys=True))
    partial.replace(store)
    return known[key]


def _check_native(profile: Profile, files: dict[str, Path]) -> None:
    for name, pinned in profile.native.items():
        path = files.get(name)
        if path is None or not path.is_file():
            raise EnvironmentMismatch(f"profile {profile.name} pins {name}, which this machine "
                                      "lacks")
        if _sha256(path) != pinned:
            raise EnvironmentMismatch(
                f"{path} is not the build profile {profile.name} pins (sha256 {pinned[:16]}…); "
                "reinstall the pinned wheel"
            )


def _installed_native(profile: Profile) -> dict[str, Path]:
    """Where the pinned native files are installed, found without importing them."""
    files = {}
    for name in profile.native:
        package, _, rest = name.partition("/")
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            files[name] = Path(spec.submodule_search_locations[0]) / rest
    return files


def _loaded_native(profile: Profile) -> dict[str, Path]:
    """The pinned native files this process has actually mapped (after importing jax)."""
    maps = Path("/proc/self/maps")
    mapped = {line.split(None, 5)[-1] for line in maps.read_text().splitlines()
              if line.count(" ") >= 5} if maps.exists() else set()
    files = {}
    for name in profile.native:
        suffix = "/" + name
        hits = sorted(path for path in mapped if path.endswith(suffix))
        if len(hits) > 1:
            raise EnvironmentMismatch(f"two copies of {name} are loaded: {', '.join(hits)}")
        if hits:
            files[name] = Path(hits[0])
    return files


def _check_device_kind(profile: Profile, kinds: list[str]) -> None:
    """Every GPU the job may use is the profile's model."""
    if profile.device_kind is None:
        return
    if not kinds:
        raise EnvironmentMismatch(f"profile {profile.name} runs jobs on {profile.device_kind} "
                                  "GPUs, this machine shows none")
    other = sorted(set(kinds) - {profile.device_kind})
    if other:
        raise EnvironmentMismatch(f"profile {profile.name} runs jobs on {profile.device_kind} "
                                  f"GPUs, this machine has {other[0]}")


def _check_gpu_libraries(profile: Profile, loaded: dict[str, int | None]) -> None:
    for name, pinned in profile.gpu_libraries.items():
        if loaded.get(name) != pinned:
            raise EnvironmentMismatch(f"profile {profile.name} pins {name} {pinned}, the job "
                                      f"process loads {loaded.get(name) or 'none'}")


def _nvidia_smi_gpus() -> list[str]:
    """GPU names as nvidia-smi prints them (jax's device_kind is the same string), without
    starting jax; [] where there is no NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()]


def _loaded_gpu_libraries() -> dict[str, int | None]:
    """The versions the CUDA plugin's loaded libraries report (jax must be running on CUDA)."""
    from jax._src.lib import cuda_versions

    if cuda_versions is None:
        return {}
    return {name: getattr(cuda_versions, getter)()
            for name, getter in GPU_LIBRARY_VERSIONS.items()}


def check_environment(spec, *, native: bool = True) -> None:
    """Static checks of a spec's (or a bare Profile's) pinned environment against this machine:
    package versions and native builds, the plugin's compute code, machine, CPU features and CPU
    count. Safe in any process; a worker runs it before it deposits. Raises EnvironmentMismatch
    naming the first difference.
    """
    profile = spec if isinstance(spec, Profile) else spec.profile
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python != profile.python:
        raise EnvironmentMismatch(f"profile {profile.name} runs jobs on Python {profile.python}, "
                                  f"this is Python {python}")
    for package, pinned in profile.packages.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            raise EnvironmentMismatch(
                f"profile {profile.name} pins {package}=={pinned}, this machine has "
                f"{installed or 'none'}; install {package}=={pinned}"
            )
    if native:
        _check_native(profile, _installed_native(profile))
    if profile.code != compute_code_digest():
        raise EnvironmentMismatch(
            f"profile {profile.name} was made by crowdml compute code {profile.code[:10]}…, this "
            f"machine runs {compute_code_digest()[:10]}…; install the requester's crowdml version"
        )
    if _platform.machine() != profile.machine:
        raise EnvironmentMismatch(
            f"profile {profile.name} is for {profile.machine} machines, this is "
            f"{_platform.machine()}"
        )
    flags = _cpu_flags()
    missing = [f for f in profile.cpu_features if flags is not None and f not in flags]
    if missing:
        raise EnvironmentMismatch(
            f"profile {profile.name} needs CPU features {', '.join(missing)}, which this CPU lacks"
        )
    _check_cpu_count(profile)
    _check_device_kind(profile, _nvidia_smi_gpus() if profile.device_kind else [])


def check_process(profile: Profile, devices: int = 1) -> None:
    """Checks that need jax, in the job's own process: the sealed environment, the CPU affinity,
    the native libraries actually loaded, the live backend and the jax/flax config in force."""
    import flax
    import jax

    if not (sys.flags.no_user_site and sys.flags.safe_path):
        raise EnvironmentMismatch("a job environment's process runs with -s -P (no user "
                                  "site-packages, no working folder on its path)")
    expected = environment_for(profile, os.environ)
    wrong = sorted({name for name in os.environ if name not in expected.keys() | SET_BY_JAX}
                   | {name for name in expected if os.environ.get(name) != expected[name]})
    if wrong:
        raise EnvironmentMismatch(f"the job process's environment is not the profile's: "
                                  f"{', '.join(wrong)}")
    cpus = len(os.sched_getaffinity(0))
    if profile.cpu_threads is not None and not (
            profile.cpu_threads <= cpus <= job_cpus(profile, devices)):
        raise EnvironmentMismatch(f"profile {profile.name} runs jobs on {profile.cpu_threads} "
                                  f"to {job_cpus(profile, devices)} CPUs, the job process has "
                                  f"{cpus}")
    _check_native(profile, _loaded_native(profile))
    try:
        backend = jax.default_backend()
    except (RuntimeError, AssertionError) as exc:  # jax asserts when JAX_PLATFORMS has no plugin
        raise EnvironmentMismatch(
            f"profile {profile.name} needs a {profile.platform} backend: {exc}".splitlines()[0]
        ) from None
    if backend != profile.platform:
        raise EnvironmentMismatch(
            f"profile {profile.name} needs the {profile.platform} backend, jax runs on {backend}"
        )
    if profile.platform == "gpu":
        _check_device_kind(profile, [device.device_kind for device in jax.devices()])
        _check_gpu_libraries(profile, _loaded_gpu_libraries())
    for config, settings in ((jax.config, profile.jax_config), (flax.config, profile.flax_config)):
        for name, value in settings.items():
            if getattr(config, name) != value:
                raise EnvironmentMismatch(f"config {name} is not {value!r}")

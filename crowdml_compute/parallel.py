"""Data parallelism whose result does not depend on how many devices compute it.

Workers own different hardware, so the device count cannot be part of the result. Plain data
parallelism (each device's mean gradient over its share of the batch, then `pmean`) sums the
batch in an order set by the device count: 1, 2 and 4 devices give three digests. Here the spec
fixes the split instead:

- the batch is cut into K micro-batches (K is a hyperparameter, so it is in the spec digest);
- each micro-batch's gradient is the same computation whatever device runs it: a device takes
  K/d consecutive micro-batches and `lax.map`s one gradient function over them;
- the K gradients are gathered onto every device (`all_gather`, in micro-batch order) and summed
  one after another, g0 + g1 + … + g(K-1), by a scan of fixed length K;
- micro-batch k's random key is `draw(step_key, k)`, whoever computes it.

The device count d only decides which device computes which micro-batches; it must divide K.

Several processes (hosts): `start_processes` joins this process to a `jax.distributed` group
(gloo collectives on CPU) before the job; the mesh then holds every process's job devices, in
process order, and a job puts its inputs on it with `replicate`. Every process computes the
whole replicated result, so each one's digest is the job's (`host_value` reads its local copy).

XLA CPU's thread pool. Virtual CPU devices (`jax_num_cpu_devices`) share one intra-op pool of
max(PJRT_NPROC, d) threads, and a matmul's bits follow the pool size (profile.py): with
PJRT_NPROC=1, one device gives other bits than two. So a profile that allows d devices pins the
pool at `Profile.xla_threads` threads and d ≤ xla_threads: the pool is then the same size for
every d (measured in README "Data parallelism").
"""

from __future__ import annotations

from .errors import EnvironmentMismatch, SpecError, first_line
from .keys import draw

AXIS = "devices"
_configured: int | None = None  # the devices this process runs jobs on; see configure_devices


def most_devices(profile) -> int | None:
    """The most devices a job under `profile` may use: on CPU the pinned XLA pool (more devices
    would enlarge the pool and change the bits), or 1 where the pool is not pinned; no limit on
    GPU or under a profile requiring exact arithmetic."""
    if profile.platform != "cpu" or profile.requires_exact:
        return None  # exact arithmetic: the pool's size does not reach the bits
    return profile.xla_threads or 1


def start_processes(profile, coordinator: str, processes: int, process_id: int) -> None:
    """Join a group of `processes` job processes (this one is `process_id`) coordinated at
    `coordinator` (host:port, served by process 0), after configure_devices."""
    import jax

    if not 0 <= process_id < processes:
        raise SpecError(f"process id {process_id} is not one of 0 … {processes - 1}")
    if profile.platform == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes=processes, process_id=process_id)
    except Exception as exc:  # noqa: BLE001 - jax raises several kinds (RuntimeError, ValueError)
        raise EnvironmentMismatch(f"cannot join the process group at {coordinator}: "
                                  f"{first_line(exc)}") from None


def agree_in_group(fingerprint: bytes, refused: Exception | None) -> None:
    """In every process of a group, before the job trains: gather each process's 32-byte
    fingerprint (of its spec, coin and device count) and whether it refused the job. Raises
    this process's own refusal, another's as a SpecError, or a SpecError when the processes
    were not given the same work (their gradients would mix two runs into a digest of none)."""
    import numpy as np
    from jax.experimental import multihost_utils

    mine = np.frombuffer(fingerprint, dtype=np.uint32)
    status = np.concatenate([mine, np.array([refused is not None], dtype=np.uint32)])
    rows = np.asarray(multihost_utils.process_allgather(status))
    if refused is not None:
        raise refused
    others = [process for process, row in enumerate(rows) if row[-1]]
    if others:
        raise SpecError(f"process {others[0]} of the group refused the job (its output says "
                        "why); no process runs it")
    if any((row[:-1] != mine).any() for row in rows):
        raise SpecError("the processes of the group were given other specs, coins or device "
                        "counts; give each the same")


def stop_processes() -> None:
    """Leave the group together: the coordinator (process 0) must not leave first."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


def replicate(tree, mesh):
    """Every leaf as an array replicated on all devices of `mesh` (all processes pass the same
    values: jobs compute them from the spec, data and coin alone)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    sharding = NamedSharding(mesh, P())

    def put(leaf):
        # Through host values: device_put cannot reach other processes' devices from an array
        # already on a device. A typed key travels as its key data; a Python number (a
        # TrainState's step) as jax's own dtype for it.
        leaf = jax.numpy.asarray(leaf)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)),
                                            impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree_util.tree_map(put, tree)


def host_value(leaf):
    """A leaf's value in this process: a replicated array spanning other processes' devices is
    read from this process's own copy."""
    if getattr(leaf, "is_fully_addressable", True):
        return leaf
    if not leaf.sharding.is_fully_replicated:
        raise SpecError("a job's result must be replicated on every device to be read")
    return leaf.addressable_data(0)


def devices_for(profile, micro_batches: int, offered: int) -> int:
    """The devices a job with `micro_batches` micro-batches runs on when the worker offers
    `offered`: the largest divisor of K within both the offer and the profile's limit."""
    if offered < 1:
        raise EnvironmentMismatch(f"a worker offers at least 1 device, not {offered}")
    limit = most_devices(profile)
    limit = offered if limit is None else min(offered, limit)
    return max(d for d in range(1, limit + 1) if micro_batches % d == 0)


def configure_devices(profile, devices: int) -> None:
    """In the job's process, before jax's backend starts: make `devices` devices (virtual ones
    on CPU) the ones jobs run on."""
    import jax

    global _configured
    limit = most_devices(profile)
    if devices < 1 or (limit is not None and devices > limit):
        most = f"1 to {limit}" if limit is not None else "at least 1"
        raise EnvironmentMismatch(f"profile {profile.name} runs jobs on {most} devices, "
                                  f"not {devices}")
    if profile.platform == "cpu" and jax.config.jax_num_cpu_devices != devices:
        jax.config.update("jax_num_cpu_devices", devices)  # once: the backend then starts
    _configured = devices


def check_devices(profile) -> None:
    """After the backend started: the process has the configured devices."""
    import jax

    wanted = _configured or 1
    have = len(jax.local_devices())  # this process's (jax.devices() holds every process's)
    if have < wanted or (profile.platform == "cpu" and have != wanted):
        raise EnvironmentMismatch(f"the job process should run on {wanted} {profile.platform} "
                                  f"devices, jax sees {have}")


def device_mesh(micro_batches: int):
    """A one-axis mesh of the job devices of every process (several under jax.distributed),
    process by process; SpecError unless their count divides K."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    per_process = _configured or len(jax.local_devices())
    devices = [device for process in range(jax.process_count())
               for device in [d for d in jax.devices() if d.process_index == process][:per_process]]
    if micro_batches % len(devices):
        raise SpecError(f"{len(devices)} devices cannot share {micro_batches} micro-batches "
                        "evenly; run on a divisor of micro_batches")
    return Mesh(np.array(devices), (AXIS,))


def split(batch, micro_batches: int):
    """(B, …) leaves → (K, B/K, …): micro-batch k is rows k·B/K … (k+1)·B/K − 1."""
    import jax

    def cut(leaf):
        if leaf.shape[0] % micro_batches:
            raise SpecError(f"a batch of {leaf.shape[0]} does not split into {micro_batches} "
                            "micro-batches")
        return leaf.reshape((micro_batches, leaf.shape[0] // micro_batches) + leaf.shape[1:])

    return jax.tree_util.tree_map(cut, batch)


def fixed_order_mean(stacked):
    """Mean over the leading axis of every leaf, summed strictly in index order."""
    import jax
    from jax import lax

    def mean(leaf):
        total, _ = lax.scan(lambda acc, item: (acc + item, None), leaf[0], leaf[1:])
        return total / leaf.shape[0]

    return jax.tree_util.tree_map(mean, stacked)


def mean_gradient(loss_fn, params, batch, key, *, mesh, micro_batches: int):
    """(mean loss, mean gradient) of `loss_fn(params, micro_batch, micro_key)` over the K
    micro-batches of `batch`, with the same bits on any number of mesh devices dividing K.
    Call it inside jit; both results are replicated on every device."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.sharding import PartitionSpec as P

    def local(params, micro, index, key):
        def one(args):
            micro_batch, k = args
            return jax.value_and_grad(loss_fn)(params, micro_batch, draw(key, k))

        losses, grads = lax.map(one, (micro, index))
        gathered = lax.all_gather((losses, grads), AXIS, tiled=True)
        return fixed_order_mean(gathered)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P()),
                            out_specs=(P(), P()), check_vma=False)
    return sharded(params, split(batch, micro_batches), jnp.arange(micro_batches), key)


def pmean_gradient(loss_fn, params, batch, key, *, mesh):
    """Plain data parallelism, for comparison only (tests, bench): each device's mean gradient
    over its share of the batch, averaged with `pmean`. Its bits change with the device count."""
    import jax
    from jax import lax
    from jax.sharding import PartitionSpec as P

    def local(params, shard, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, shard, key)
        return lax.pmean((loss, grads), AXIS)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                            out_specs=(P(), P()), check_vma=False)
    return sharded(params, batch, key)

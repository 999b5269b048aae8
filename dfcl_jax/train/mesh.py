"""One data-parallel device mesh: batches sharded along "data", state replicated, on one or many
processes (hosts). Also the chief-process guard for every write that is not an orbax save."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D "data" mesh over `num_devices` devices (0: all, across every process).

    With several processes each contributes the same number of its own devices, so that every
    process holds a share of the mesh (a plain `jax.devices()[:n]` would leave some out)."""
    total, procs = jax.device_count(), jax.process_count()
    n = num_devices or total
    if n > total:
        raise ValueError(f"config.runtime.num_devices={num_devices} but only {total} devices exist")
    if n % procs:
        raise ValueError(f"config.runtime.num_devices={num_devices} is not a multiple of the "
                         f"{procs} processes (each process must hold the same share of the mesh)")
    per_process = n // procs
    devices = [d for p in range(procs)
               for d in sorted((d for d in jax.devices() if d.process_index == p),
                               key=lambda d: d.id)[:per_process]]
    return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh | None, tree, batch: int):
    """Shardings for `tree`: leaves whose leading axis is `batch` along "data", the rest
    replicated (None without a mesh)."""
    if mesh is None:
        return None
    dat, rep = data_sharding(mesh), replicated(mesh)
    return jax.tree.map(lambda a: dat if np.ndim(a) >= 1 and np.shape(a)[0] == batch else rep,
                        tree)


def constrain_batch(x, mesh: Mesh | None):
    """Inside jit: lay a batch that was made on device (noise, generator output) along "data",
    so each device computes its share instead of the whole batch."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, data_sharding(mesh))


def put_batch(mesh: Mesh, *host_arrays: np.ndarray):
    """This host's slices of a global batch -> global arrays sharded along "data"."""
    sharding = data_sharding(mesh)
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, sharding) for a in host_arrays)
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in host_arrays)


def put_replicated(mesh: Mesh, tree):
    return jax.device_put(tree, replicated(mesh))


def to_host(x) -> np.ndarray:
    """A (possibly multi-process, sharded) array as one numpy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def is_chief() -> bool:
    """Whether this process writes the run's files (logs, results, plots; not orbax saves,
    which every process enters)."""
    return jax.process_index() == 0

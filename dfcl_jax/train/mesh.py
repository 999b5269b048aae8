"""One data-parallel device mesh: batches sharded along "data", state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (0: all, across every host)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"config.runtime.num_devices={num_devices} but only "
                             f"{len(devices)} devices exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(mesh: Mesh, *host_arrays: np.ndarray):
    """This host's slices of a global batch -> global arrays sharded along "data"."""
    sharding = data_sharding(mesh)
    if jax.process_count() == 1:
        return tuple(jax.device_put(a, sharding) for a in host_arrays)
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in host_arrays)


def put_replicated(mesh: Mesh, tree):
    return jax.device_put(tree, replicated(mesh))

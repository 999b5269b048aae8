"""Run by test_sharding.py in a subprocess with 4 fake CPU devices (XLA_FLAGS set before jax)."""

import os
import sys

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dfcl_jax.methods import TaskInfo  # noqa: E402
from dfcl_jax.train import mesh as mesh_lib  # noqa: E402
from dfcl_jax.train.state import init_run_state  # noqa: E402
from dfcl_jax.train.steps import make_eval_step, make_train_step  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def one_step(exp_fn, num_devices, method):
    from dfcl_jax.train.loop import build_experiment

    cfg = tiny_config(sys.argv[1], method=method, **{"runtime.num_devices": num_devices})
    exp = build_experiment(cfg, sys.argv[2])
    run = init_run_state(exp.model, cfg.train, jax.random.key(0),
                         np.zeros((1, *exp.data.image_shape), np.float32))
    run = mesh_lib.put_replicated(exp.mesh, run)
    step = make_train_step(exp.model, exp.method, exp.augmentation, exp.mesh)
    ix = exp.training_indices(0)[:32]
    images, labels = mesh_lib.put_batch(exp.mesh, exp.data.train_images[ix], exp.train_labels[ix])
    assert len(images.sharding.device_set) == num_devices
    run, metrics = step(run, images, labels, TaskInfo.make(0, 5), jax.random.key(1))
    jax.block_until_ready(metrics)
    run, metrics = step(run, images, labels, TaskInfo.make(0, 5), jax.random.key(2))
    jax.block_until_ready(metrics)
    ev = make_eval_step(exp.model, exp.augmentation, exp.mesh)
    variables = {"params": run.train.params, "batch_stats": run.train.batch_stats}
    correct = np.asarray(ev(variables, images, labels, np.int32(5)))
    return (float(metrics["loss"]), jax.device_get(run.train.params),
            jax.device_get(run.train.batch_stats), correct)


def inversion_losses_agree():
    """BN-statistics losses see the global batch: sharding the images changes nothing."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from dfcl_jax.inversion.api import as_teacher_fn
    from dfcl_jax.inversion.deepinversion import DeepInversionConfig, deepinversion_loss
    from dfcl_jax.inversion.generator import GeneratorConfig, abd_generator_loss
    from dfcl_jax.models.generator import Generator
    from dfcl_jax.models.resnet import cifar_resnet

    model = cifar_resnet(10, depth=8, widths=(4, 8, 16))
    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
    v = model.init(jax.random.key(1), x)
    _, st = model.apply(v, x * 2 + 1, True, mutable=["batch_stats"])
    v = {"params": v["params"], "batch_stats": st["batch_stats"]}
    labels = jnp.arange(16) % 10
    di = jax.jit(lambda img: deepinversion_loss(as_teacher_fn(model, v), DeepInversionConfig(), img,
                                                labels, 10, jax.random.key(2)))
    gen = Generator(image_size=32, channels=3, z_dim=8, width=8)
    gv = gen.init(jax.random.key(3), jnp.zeros((2, 8)))
    z = jax.random.normal(jax.random.key(4), (16, 8))
    ga = jax.jit(lambda zz: abd_generator_loss(gen, model, gv, v, zz, 10, GeneratorConfig()))
    mesh = mesh_lib.make_mesh(4)
    sharded = NamedSharding(mesh, P("data"))
    for name, fn, arg in (("deepinversion", di, x), ("abd generator", ga, z)):
        one = fn(arg)
        four = fn(jax.device_put(arg, sharded))
        jax.block_until_ready((one, four))
        print(f"{name} loss: 1 device {float(one[0]):.7f}, 4 devices {float(four[0]):.7f}")
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def pmi_inversion_agrees():
    """PMI with its micro-batch sharded over 4 devices gives the images of one device."""
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from dfcl_jax.inversion.pmi import PMIConfig, PMIInverter
    from dfcl_jax.models.resnet import cifar_resnet

    model = cifar_resnet(10, depth=8, widths=(4, 8, 16))
    v = model.init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
    z = jax.random.normal(jax.random.key(2), (16, 16))
    cfg = PMIConfig(block_steps=3, full_steps=3, full_warmup=1, full_milestones=(), chunk=3,
                    micro_batch=16)
    one = PMIInverter(model, cfg).invert(v, z, (32, 32, 3), jax.random.key(3), progress=False)
    inv4 = PMIInverter(model, cfg, mesh=mesh_lib.make_mesh(4))
    v4 = mesh_lib.put_replicated(inv4.mesh, v)
    four = inv4.invert(v4, z, (32, 32, 3), jax.random.key(3), progress=False)
    print(f"pmi feature MSE: 1 device {one.feature_mse:.7f}, 4 devices {four.feature_mse:.7f}")
    np.testing.assert_allclose(one.feature_mse, four.feature_mse, rtol=1e-5)
    assert not four.images.sharding.is_fully_replicated, four.images.sharding
    # Every solve compiled once: the carry made on the host and the one a chunk returns have the
    # same layout (image-shaped leaves along "data", scalars replicated).
    for _, loop in [*inv4._block_loops.values(), inv4._full_loop]:
        assert all(n == 1 for n in loop.compile_counts().values()), loop.compile_counts()
    tx, loop = inv4.block_loop(1)
    x0 = jax.random.normal(jax.random.key(6), inv4.input_shapes(v, (32, 32, 3), 16)[1])
    target = inv4._place(jax.random.normal(jax.random.key(7), inv4.input_shapes(v, (32, 32, 3), 16)[2]), 16)
    carry = inv4.initial_carry(tx, x0, 3)
    carry, _ = loop.run(carry, 6, (v4, target, jnp.zeros(())), progress=False,
                        carry_sharding=inv4.carry_sharding(carry))
    image_leaves = [a for a in jax.tree.leaves(carry) if a.ndim and a.shape[0] == 16]
    assert len(image_leaves) == 4  # x, Adam's two moments, the kept iterate
    for a in image_leaves:
        assert a.sharding.spec == P("data") and not a.sharding.is_fully_replicated, a.sharding
        assert len(a.addressable_shards) == 4 and a.addressable_shards[0].data.shape[0] == 4
    assert loop.compile_counts() == {3: 1}, loop.compile_counts()
    # One block's loss and gradient see the global micro-batch (BN and input-prior statistics).
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = jax.random.normal(jax.random.key(4), (16, 32, 32, 4))
    y = jax.random.normal(jax.random.key(5), (16, 32, 32, 4))
    w = (1.0, 1.0, 1.0)
    grad = jax.jit(jax.grad(lambda a, t: inv4.block_loss(v, 1, a, t, w)[0]))
    g1 = grad(x, y)
    sharded = NamedSharding(inv4.mesh, P("data"))
    g4 = grad(jax.device_put(x, sharded), jax.device_put(y, sharded))
    np.testing.assert_allclose(g1, g4, rtol=1e-5, atol=1e-7)


def generator_batches_are_sharded():
    """The ABD generator's batches lie along "data" (each device makes and scores its share)
    and its training gives the losses of one device; DGR's VAE samples too."""
    from jax.sharding import PartitionSpec as P

    from dfcl_jax.inversion.generator import GeneratorConfig, GeneratorTrainer
    from dfcl_jax.models.generator import Generator
    from dfcl_jax.models.resnet import cifar_resnet

    model = cifar_resnet(10, depth=8, widths=(4, 8, 16))
    v = model.init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
    gen = Generator(image_size=32, channels=3, z_dim=8, width=8)
    cfg = GeneratorConfig(steps=4, batch_size=16, chunk=2)
    histories = []
    for mesh in (None, mesh_lib.make_mesh(4)):
        trainer = GeneratorTrainer(gen, model, cfg, mesh)
        teacher = v if mesh is None else mesh_lib.put_replicated(mesh, v)
        state = trainer.init(jax.random.key(0))
        state, history = trainer.train(state, teacher, 10, jax.random.key(2), progress=False)
        histories.append(history["loss"])
        images = trainer.sample(state, jax.random.key(3), 16)
        if mesh is not None:
            assert images.sharding.spec[0] == "data" and not images.sharding.is_fully_replicated
            assert trainer.loop.compile_counts() == {2: 1}
    print(f"abd generator losses: 1 device {histories[0]}, 4 devices {histories[1]}")
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-4, atol=1e-6)
    from dfcl_jax.methods import get_method, method_config

    dgr = get_method(method_config("dgr"))
    dgr.cfg.vae.update({"width": 8, "z_dim": 8})
    mesh = mesh_lib.make_mesh(4)
    dgr.bind(10, 5, mesh)
    extras = dgr.init_extras(model, jax.random.key(4), np.zeros((1, 32, 32, 3), np.float32))
    samples = dgr.decode(mesh_lib.put_replicated(mesh, extras["vae"]), jax.random.key(5), 16)
    assert samples.sharding.spec[0] == "data" and not samples.sharding.is_fully_replicated


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    for method in ("finetune", "lwf_mc"):
        l1, p1, s1, c1 = one_step(None, 1, method)
        l4, p4, s4, c4 = one_step(None, 4, method)
        print(f"{method}: loss 1 device {l1:.7f}, 4 devices {l4:.7f}")
        np.testing.assert_allclose(l1, l4, rtol=1e-5)
        for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p4, s4))):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
        np.testing.assert_array_equal(c1, c4)
    inversion_losses_agree()
    pmi_inversion_agrees()
    generator_batches_are_sharded()
    print("SAME")

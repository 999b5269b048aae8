"""Real data: Fashion-MNIST from the Debian package, through the offline IDX source."""

import numpy as np

from dfcl_jax.data.sources import load_dataset
from dfcl_jax.train.loop import train_and_evaluate
from experiments import fashion_mnist
from tests.conftest import FASHION_DIR, requires_fashion_mnist, tiny_config


@requires_fashion_mnist
def test_fashion_mnist_is_read_from_the_debian_files():
    data = load_dataset(fashion_mnist.get_config().data)
    assert data.num_classes == 10 and data.image_shape == (32, 32, 1)
    assert len(data.train_labels) == 60000 and len(data.test_labels) == 10000
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.train_images[:, :2].max() == 0  # 28x28 zero-padded to 32x32


@requires_fashion_mnist
def test_lwf_mc_retains_more_of_task_1_than_finetune(tmp_path):
    """On real data, distillation keeps old-class accuracy that fine-tuning destroys."""
    common = {"data.train_per_class": 500, "train.batch_size": 64, "train.lr": 0.1}
    res = {m: train_and_evaluate(tiny_config(FASHION_DIR, method=m, tasks=2, epochs=3, **common),
                                 str(tmp_path / m))
           for m in ("finetune", "lwf_mc")}
    ft, mc = res["finetune"]["accuracy_matrix"], res["lwf_mc"]["accuracy_matrix"]
    print("finetune R", ft, "lwf_mc R", mc)
    assert ft[0][0] > 0.5 and mc[0][0] > 0.5  # both learned task 1 (chance: 0.2)
    assert mc[0][1] > ft[0][1] + 0.1  # retained accuracy on task 1 after task 2
    assert res["lwf_mc"]["forgetting"] < res["finetune"]["forgetting"]
    assert res["lwf_mc"]["final_accuracy"] > res["finetune"]["final_accuracy"]

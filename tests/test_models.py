import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest


# Eager initialisation compiles one small program per parameter shape (seconds on a busy
# CPU), so LeNet is built once, and the WideResNet is built abstractly and then filled
# with host-side random values of the same shapes.
@pytest.fixture(scope="module")
def lenet():
    return LeNet(key=jr.key(0))


@pytest.fixture(scope="module")
def small_wrn():
    abstract = eqx.filter_eval_shape(WideResNet, 10, 1, key=jr.key(0), num_classes=7)
    rng = np.random.default_rng(0)

    def fill(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
        return leaf

    return jax.tree.map(fill, abstract)


def _batched(model, x):
    return eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(model, x)

from glocal_core._models import LeNet, MetaMLP, SmallCNN, WideResNet, count_parameters


def test_lenet_parameter_count(lenet):
    # conv 1→16: 416, conv 16→16: 6,416, linear 256→32: 8,224, linear 32→10: 330.
    assert count_parameters(lenet) == 15_386


def test_wideresnet_28_2_parameter_count():
    # Abstract construction: sizing WRN-28-2 needs no initialisation.
    wrn10 = eqx.filter_eval_shape(WideResNet, 28, 2, key=jr.key(0))
    wrn100 = eqx.filter_eval_shape(WideResNet, 28, 2, key=jr.key(0), num_classes=100)
    assert count_parameters(wrn10) == 1_467_610
    assert count_parameters(wrn100) == 1_479_220


def test_count_parameters_abstract_matches_concrete(lenet):
    assert count_parameters(eqx.filter_eval_shape(LeNet, key=jr.key(0))) == count_parameters(lenet)


def test_small_wideresnet_parameter_count():
    assert count_parameters(eqx.filter_eval_shape(WideResNet, 10, 1, key=jr.key(0))) == 77_850


def test_metamlp_parameter_count():
    assert count_parameters(MetaMLP(key=jr.key(0))) == 385


def test_count_parameters_skips_non_arrays():
    tree = {"w": jnp.ones((2, 3)), "n": jnp.arange(4), "s": 1.0, "f": jax.nn.relu}
    assert count_parameters(tree) == 6


def test_lenet_forward(lenet):
    model = lenet
    x = jr.normal(jr.key(1), (5, 28, 28, 1))
    logits = _batched(model, x)
    assert logits.shape == (5, 10)
    assert jnp.all(jnp.isfinite(logits))
    assert jnp.allclose(logits[2], eqx.filter_jit(model)(x[2]), atol=1e-5)


def test_lenet_other_shapes():
    model = eqx.filter_eval_shape(
        LeNet, key=jr.key(0), in_channels=3, num_classes=100, image_size=32
    )
    out = eqx.filter_eval_shape(model, jnp.zeros((32, 32, 3)))
    assert out.shape == (100,)


def test_wideresnet_forward(small_wrn):
    model = small_wrn
    x = jr.normal(jr.key(1), (3, 32, 32, 3))
    logits = _batched(model, x)
    assert logits.shape == (3, 7)
    assert jnp.all(jnp.isfinite(logits))
    assert jnp.allclose(logits[1], eqx.filter_jit(model)(x[1]), atol=1e-4)


def test_wideresnet_grayscale_input():
    model = eqx.filter_eval_shape(WideResNet, 10, 1, key=jr.key(0), in_channels=1)
    out = eqx.filter_eval_shape(model, jnp.zeros((28, 28, 1)))
    assert out.shape == (10,)


@pytest.mark.parametrize("depth", [8, 12, 27, 4])
def test_wideresnet_bad_depth(depth):
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth, 1, key=jr.key(0))


def test_wideresnet_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        WideResNet(10, 1, key=jr.key(0), groups=5)


def test_metamlp_output_in_unit_interval():
    meta = MetaMLP(key=jr.key(0))
    losses = jnp.array([[0.0, 0.1, 2.3], [5.0, 50.0, 1e-3]])
    weights = meta(losses)
    assert weights.shape == losses.shape
    assert jnp.all((weights > 0) & (weights < 1))
    assert meta(jnp.array(0.7)).shape == ()
    assert jnp.allclose(weights[0, 2], meta(2.3))


def test_mlp_parameter_count_and_forward():
    from glocal_core import MLP

    mlp = MLP(key=jr.key(0))
    assert count_parameters(mlp) == 784 * 32 + 32 + 32 * 10 + 10 == 25_450
    x = jr.normal(jr.key(1), (28, 28, 1))
    logits = mlp(x)
    assert logits.shape == (10,)
    # It reads the image flattened: the same pixels in another layout give the same logits.
    np.testing.assert_allclose(mlp(x.reshape(784)), logits, rtol=1e-6)
    hidden = jax.nn.leaky_relu(mlp.hidden.weight @ x.reshape(784) + mlp.hidden.bias)
    np.testing.assert_allclose(logits, mlp.head.weight @ hidden + mlp.head.bias, rtol=1e-5)


def test_small_cnn_counts_shapes_and_widths():
    """The smoke stand-in for WideResNet (fig3): (1·9+1)·8 + (8·9+1)·16 + 16·6·6·10 + 10."""
    model = SmallCNN(key=jr.key(0))
    assert count_parameters(model) == 7018 == 80 + 1168 + 5770
    assert model(jnp.ones((28, 28, 1))).shape == (10,)
    wide = SmallCNN(key=jr.key(0), width=2, in_channels=3, image_size=32, num_classes=100)
    logits = jax.vmap(wide)(jnp.ones((4, 32, 32, 3)))
    assert logits.shape == (4, 100) and bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(ValueError, match="width=0"):
        SmallCNN(key=jr.key(0), width=0)
    with pytest.raises(ValueError, match="too small"):
        SmallCNN(key=jr.key(0), image_size=5)

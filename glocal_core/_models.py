"""The networks of the paper's experiments (Appendix B), as equinox modules.

Every model maps a *single* example to its output; batch with `jax.vmap`. Images are
channels-last `(H, W, C)` float32, the layout `glocal_core._data` produces, and are
transposed to equinox's channels-first layout inside.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


def _is_inexact(leaf) -> bool:
    # Abstract leaves count too, so that a model built by `eqx.filter_eval_shape` can be
    # sized without paying for its initialisation.
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jnp.issubdtype(leaf.dtype, jnp.inexact)
    return eqx.is_inexact_array(leaf)


def count_parameters(model: PyTree) -> int:
    """Number of trainable scalars: the total size of the inexact-array leaves of `model`.

    **Arguments:**

    - `model`: any pytree, typically an `eqx.Module`; may also be the abstract output of
        `eqx.filter_eval_shape`.

    **Returns:**

    The parameter count as a Python `int`.
    """
    leaves = jax.tree_util.tree_leaves(model)
    return sum(math.prod(leaf.shape) for leaf in leaves if _is_inexact(leaf))


def _conv_output_size(size: int, kernel: int, stride: int = 1) -> int:
    return (size - kernel) // stride + 1


class LeNet(eqx.Module):
    """The paper's LeNet (Appendix B.1): conv(16, 5×5) → pool → conv(16, 5×5) → pool →
    linear(32) → linear(`num_classes`), leaky ReLU after every hidden layer.

    The convolutions are unpadded and the pools are 2×2, so a 28×28×1 image becomes a
    16×4×4 feature map. With 28×28×1 inputs and 10 classes the network has exactly
    **15,386** parameters, the paper's "15k" (a second hidden linear layer of width 32
    would make it 16,442).
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    hidden: eqx.nn.Linear
    head: eqx.nn.Linear
    pool: eqx.nn.MaxPool2d

    def __init__(
        self,
        *,
        key: PRNGKeyArray,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
    ):
        """**Arguments:**

        - `key`: PRNG key for the initialisation.
        - `in_channels`: channels of the input image.
        - `num_classes`: number of output logits.
        - `image_size`: side of the square input image; fixes the width of the first
            linear layer.
        """
        k1, k2, k3, k4 = jr.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(in_channels, 16, 5, key=k1)
        self.conv2 = eqx.nn.Conv2d(16, 16, 5, key=k2)
        self.pool = eqx.nn.MaxPool2d(2, 2)
        side = image_size
        for _ in range(2):
            side = _conv_output_size(_conv_output_size(side, 5), 2, 2)
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for LeNet (needs >= 16).")
        self.hidden = eqx.nn.Linear(16 * side * side, 32, key=k3)
        self.head = eqx.nn.Linear(32, num_classes, key=k4)

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, " num_classes"]:
        """**Arguments:**

        - `x`: one image, channels last.

        **Returns:**

        The logits.
        """
        x = jnp.transpose(x, (2, 0, 1))
        x = self.pool(jax.nn.leaky_relu(self.conv1(x)))
        x = self.pool(jax.nn.leaky_relu(self.conv2(x)))
        x = jax.nn.leaky_relu(self.hidden(jnp.ravel(x)))
        return self.head(x)


class MLP(eqx.Module):
    """A one-hidden-layer perceptron on flattened images: (H·W·C) → `hidden` → `num_classes`,
    leaky ReLU as in LeNet. The `smoke` profile's stand-in for LeNet on a CPU: with 28×28×1
    inputs, 32 hidden units and 10 classes it has **25,450** parameters (LeNet: 15,386) but
    costs a small fraction of LeNet's convolutions per step, which lets the paper's DMD
    window (τ = 100, σ = 80, m = 10) run on real Fashion-MNIST within CI time.
    """

    hidden: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(
        self,
        *,
        key: PRNGKeyArray,
        in_features: int = 784,
        hidden: int = 32,
        num_classes: int = 10,
    ):
        """**Arguments:**

        - `key`: PRNG key for the initialisation.
        - `in_features`: pixels per image, H·W·C.
        - `hidden`: width of the hidden layer.
        - `num_classes`: number of output logits.
        """
        k1, k2 = jr.split(key)
        self.hidden = eqx.nn.Linear(in_features, hidden, key=k1)
        self.head = eqx.nn.Linear(hidden, num_classes, key=k2)

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, " num_classes"]:
        """**Arguments:**

        - `x`: one image, channels last (or already flat).

        **Returns:**

        The logits.
        """
        return self.head(jax.nn.leaky_relu(self.hidden(jnp.ravel(x))))


class SmallCNN(eqx.Module):
    """Two strided convolutions and a linear head: conv(8·`width`, 3×3, stride 2) →
    conv(16·`width`, 3×3, stride 2) → linear(`num_classes`), leaky ReLU after each
    convolution. The `smoke` profile's stand-in for WideResNet-28-2 (Figure 3): still a
    convolutional network learned with SGD, but strided convolutions instead of LeNet's
    unpadded 5×5 ones and pools cost about a fifth of a LeNet step when q tangents ride
    along under XLA:CPU (measured on Fashion-MNIST, batch 128, q = 2). With 28×28×1 inputs,
    `width` 1 and 10 classes it has **7,018** parameters.
    """

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(
        self,
        *,
        key: PRNGKeyArray,
        width: int = 1,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
    ):
        """**Arguments:**

        - `key`: PRNG key for the initialisation.
        - `width`: channel multiplier; the convolutions have 8·`width` and 16·`width`.
        - `in_channels`: channels of the input image.
        - `num_classes`: number of output logits.
        - `image_size`: side of the square input image; fixes the width of the head.
        """
        if width < 1:
            raise ValueError(f"width={width}: SmallCNN needs a width of at least 1.")
        side = _conv_output_size(_conv_output_size(image_size, 3, 2), 3, 2)
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for SmallCNN (needs >= 7).")
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(in_channels, 8 * width, 3, stride=2, key=k1)
        self.conv2 = eqx.nn.Conv2d(8 * width, 16 * width, 3, stride=2, key=k2)
        self.head = eqx.nn.Linear(16 * width * side * side, num_classes, key=k3)

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, " num_classes"]:
        """**Arguments:**

        - `x`: one image, channels last.

        **Returns:**

        The logits.
        """
        x = jnp.transpose(x, (2, 0, 1))
        x = jax.nn.leaky_relu(self.conv1(x))
        x = jax.nn.leaky_relu(self.conv2(x))
        return self.head(jnp.ravel(x))


class _Block(eqx.Module):
    """Pre-activation basic block: GN → act → conv3×3(stride) → GN → act → conv3×3, plus a
    shortcut that is the identity, or a 1×1 conv of the activated input when the shape
    changes (as in Zagoruyko & Komodakis' reference code)."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        self.norm1 = eqx.nn.GroupNorm(groups, c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, stride, padding=1, use_bias=False, key=k1)
        self.norm2 = eqx.nn.GroupNorm(groups, c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, 1, padding=1, use_bias=False, key=k2)
        if c_in == c_out and stride == 1:
            self.shortcut = None
        else:
            self.shortcut = eqx.nn.Conv2d(c_in, c_out, 1, stride, use_bias=False, key=k3)

    def __call__(self, x: Float[Array, "C H W"]) -> Float[Array, "C2 H2 W2"]:
        a = jax.nn.leaky_relu(self.norm1(x))
        y = self.conv1(a)
        y = self.conv2(jax.nn.leaky_relu(self.norm2(y)))
        skip = x if self.shortcut is None else self.shortcut(a)
        return y + skip


class WideResNet(eqx.Module):
    """WideResNet-`depth`-`width` (Zagoruyko & Komodakis, 2016) as modified in the paper's
    Appendix B: GroupNorm instead of BatchNorm (so there is no batch state and the model is
    a pure per-example function) and leaky ReLU instead of ReLU.

    A 3×3 stem conv to 16 channels; three stages of `(depth - 4) / 6` pre-activation basic
    blocks with `16·width`, `32·width`, `64·width` channels and strides 1, 2, 2; a final
    GroupNorm + leaky ReLU, global average pooling and a linear head. Convolutions have no
    bias since a normalisation follows each of them.

    WRN-28-2 on 32×32×3 inputs with 10 classes has exactly **1,467,610** parameters
    (1,479,220 with 100 classes), the paper's "1.5M".
    """

    stem: eqx.nn.Conv2d
    blocks: tuple[_Block, ...]
    norm: eqx.nn.GroupNorm
    head: eqx.nn.Linear

    def __init__(
        self,
        depth: int = 28,
        width: int = 2,
        *,
        key: PRNGKeyArray,
        num_classes: int = 10,
        in_channels: int = 3,
        groups: int = 8,
    ):
        """**Arguments:**

        - `depth`: total number of weighted layers; must be 4 mod 6 (10, 16, 22, 28, ...).
        - `width`: widening factor k.
        - `key`: PRNG key for the initialisation.
        - `num_classes`: number of output logits.
        - `in_channels`: channels of the input image.
        - `groups`: GroupNorm groups; must divide 16 and every stage width. The default 8
            divides 16·k for every integer k (Wu & He's 32 groups would not divide 16).
        """
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...); "
                f"got depth={depth}."
            )
        widths = [16 * width, 32 * width, 64 * width]
        if any(c % groups for c in [16, *widths]):
            raise ValueError(f"groups={groups} must divide 16 and the stage widths {widths}.")
        per_stage = (depth - 4) // 6
        keys = jr.split(key, 3 * per_stage + 2)
        self.stem = eqx.nn.Conv2d(in_channels, 16, 3, padding=1, use_bias=False, key=keys[0])
        blocks = []
        c_in = 16
        for stage, (c_out, stride) in enumerate(zip(widths, [1, 2, 2])):
            for i in range(per_stage):
                block_key = keys[1 + stage * per_stage + i]
                blocks.append(_Block(c_in, c_out, stride if i == 0 else 1, groups, key=block_key))
                c_in = c_out
        self.blocks = tuple(blocks)
        self.norm = eqx.nn.GroupNorm(groups, c_in)
        self.head = eqx.nn.Linear(c_in, num_classes, key=keys[-1])

    def __call__(self, x: Float[Array, "H W C"]) -> Float[Array, " num_classes"]:
        """**Arguments:**

        - `x`: one image, channels last.

        **Returns:**

        The logits.
        """
        x = self.stem(jnp.transpose(x, (2, 0, 1)))
        for block in self.blocks:
            x = block(x)
        x = jax.nn.leaky_relu(self.norm(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


class MetaMLP(eqx.Module):
    """The reweighting meta network μ_φ: ℝ → (0, 1) of Sec. 4.2, an MLP 1 → `hidden` → 1
    with a sigmoid output, applied to each example's loss. With `hidden=128` it has exactly
    **385** parameters, as the paper states.

    The hidden activation is ReLU, following Meta-Weight-Net (Shu et al., 2019), which the
    paper's reweighting task follows; the paper does not name it.
    """

    mlp: eqx.nn.MLP

    def __init__(self, *, key: PRNGKeyArray, hidden: int = 128):
        """**Arguments:**

        - `key`: PRNG key for the initialisation.
        - `hidden`: width of the hidden layer.
        """
        self.mlp = eqx.nn.MLP(
            "scalar",
            "scalar",
            width_size=hidden,
            depth=1,
            activation=jax.nn.relu,
            final_activation=jax.nn.sigmoid,
            key=key,
        )

    def __call__(self, loss: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
        """**Arguments:**

        - `loss`: a scalar loss value, or an array of them (for example a minibatch's
            per-example losses); each entry is weighted independently.

        **Returns:**

        The weights in (0, 1), with the shape of `loss`.
        """
        loss = jnp.asarray(loss)
        weights = jax.vmap(self.mlp)(jnp.ravel(loss))
        return jnp.reshape(weights, loss.shape)


"""Linear observation operators y = A x for inverse problems (`imputation.solve_inverse`).

An operator acts per example on a batch, x `(B, ...)` -> y `(B, ...)`, and is a pytree
(`score.pytree_dataclass`): its arrays (a mask, a kernel, a matrix) are traced leaves, so
a new mask or kernel of the same shape reuses the compiled sampler; its sizes are static.

    A(x), AT(y)       the operator and its adjoint, <A x, y> = <x, AT y>
    replace(x, k)     x - A+ (A x - k): x with its component in the row space of A set to
                      what A maps to k (A+ the pseudo-inverse; only for `has_pinv` operators)
    scale             s with A AT = s^2 I on the range of A (all singular values s), or None

The replacement method needs `replace`, and with noisy y also `scale` (the observation
noise sigma_y is then the same, sigma_y / s, in every observed direction of x); TMPD needs
only A and AT. The constructors:

    mask(m)                 y = m x (m = 1 known, 0 unknown; y has x's shape), s = 1
    colour_projection()     y = the grey coordinate of the colour basis (`COLOR_BASIS`), s = 1
    average_pool(k)         y = means of k x k blocks of (B, H, W, C) images, s = 1/k
    blur(kernel)            y = 'same' depthwise convolution with zero padding (odd sizes);
                            no cheap pseudo-inverse: TMPD only
    dense(W, shape)         y = W x for x of shape (B, *shape) flattened, A+ = pinv(W); s if
                            the nonzero singular values of W are equal
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from scoresde.score import pytree_dataclass, static_field

# The reference's orthonormal colour basis: column 0 is the gray direction (1, 1, 1) / sqrt(3).
COLOR_BASIS = np.array(
    [
        [5.7735014e-01, -8.1649649e-01, 4.0820226e-10],
        [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
        [5.7735026e-01, 4.0824822e-01, -7.0710683e-01],
    ]
)


class LinearOperator:
    """Base class: `A`, `AT`, and for the replacement method `replace` (see the module docstring).

    `output_shape(x_shape)` and `input_shape(y_shape)` map batch shapes, raising a one-line
    ValueError for shapes the operator does not take."""

    has_pinv: bool = True
    scale: float | None = None

    def A(self, x):
        raise NotImplementedError

    def AT(self, y):
        raise NotImplementedError

    def pinv(self, y):
        """A+ y; by default AT y / s^2 (exact when A AT = s^2 I on the range of A)."""
        if self.scale is None:
            raise NotImplementedError
        return self.AT(y) / self.scale**2

    def replace(self, x, known):
        """x - A+ (A x - known): x's row-space component set to A+ known."""
        return x + self.pinv(known - self.A(x))

    def __call__(self, x):
        return self.A(x)

    def output_shape(self, x_shape):
        return tuple(x_shape)

    def input_shape(self, y_shape):
        return tuple(y_shape)

    @property
    def name(self) -> str:
        """The constructor's name, for messages."""
        return type(self).__name__.lower()


@pytree_dataclass
class Subspace(LinearOperator):
    """y = mask * (x @ basis): the coordinates of x in an orthonormal basis of its last axis
    (None: the identity), those where mask = 1 observed; y has x's shape, 0 where unobserved.

    mask broadcasts to x's shape; basis_inv is the basis' inverse (its transpose up to the
    rounding of its entries), used for the way back so that `replace` keeps the known
    coordinates exactly."""

    mask: jax.Array
    basis: jax.Array | None = None
    basis_inv: jax.Array | None = None
    scale: float = static_field(default=1.0)

    @property
    def name(self):
        return "mask" if self.basis is None else "colour_projection"

    def decouple(self, x):
        return x if self.basis is None else x @ self.basis

    def couple(self, u):
        return u if self.basis is None else u @ self.basis_inv

    def A(self, x):
        return self.mask * self.decouple(x)

    def AT(self, y):
        return self.couple(self.mask * y)

    def pinv(self, y):
        return self.AT(y)

    def replace(self, x, known):
        """couple(decouple(x) (1 - mask) + known mask): exact in the known coordinates."""
        return self.couple(self.decouple(x) * (1.0 - self.mask) + known * self.mask)

    def output_shape(self, x_shape):
        x_shape = tuple(x_shape)
        if self.basis is not None and (len(x_shape) < 2 or x_shape[-1] != self.basis.shape[0]):
            raise ValueError(f"The colour basis acts on a last axis of size {self.basis.shape[0]}; "
                             f"x has shape {x_shape}.")
        try:
            fits = np.broadcast_shapes(np.shape(self.mask), x_shape) == x_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"mask of shape {np.shape(self.mask)} does not broadcast to x's shape {x_shape}.")
        return x_shape


@pytree_dataclass
class AveragePool(LinearOperator):
    """y = means of factor x factor pixel blocks of images x `(B, H, W, C)`: `(B, H/f, W/f, C)`.
    A AT = I / f^2, so A+ y repeats y over the blocks (nearest upsampling)."""

    factor: int = static_field()

    @property
    def scale(self):
        return 1.0 / self.factor

    @property
    def name(self):
        return f"average_pool({self.factor})"

    def A(self, x):
        b, h, w, c = x.shape
        f = self.factor
        return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))

    def AT(self, y):
        return self.pinv(y) / self.factor**2

    def pinv(self, y):
        return jnp.repeat(jnp.repeat(y, self.factor, axis=1), self.factor, axis=2)

    def output_shape(self, x_shape):
        x_shape = tuple(x_shape)
        f = self.factor
        if len(x_shape) != 4 or x_shape[1] % f or x_shape[2] % f:
            raise ValueError(f"average_pool({f}) takes images (B, H, W, C) with H and W multiples of {f}; "
                             f"got shape {x_shape}.")
        return (x_shape[0], x_shape[1] // f, x_shape[2] // f, x_shape[3])

    def input_shape(self, y_shape):
        y_shape = tuple(y_shape)
        if len(y_shape) != 4:
            raise ValueError(f"average_pool({self.factor}) observes images (B, h, w, C); y has shape {y_shape}.")
        return (y_shape[0], y_shape[1] * self.factor, y_shape[2] * self.factor, y_shape[3])


@pytree_dataclass
class Blur(LinearOperator):
    """y = kernel * x per channel of images `(B, H, W, C)`, 'same' size with zero padding
    (a cross-correlation, as `jax.lax.conv`); kernel `(kh, kw)` with odd sizes, so that the
    adjoint is the correlation with the flipped kernel. No cheap pseudo-inverse."""

    kernel: jax.Array
    has_pinv = False

    def _correlate(self, x, kernel):
        c = x.shape[-1]
        w = jnp.tile(kernel.astype(x.dtype)[:, :, None, None], (1, 1, 1, c))  # HWIO, one filter per channel
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=c)

    def A(self, x):
        return self._correlate(x, self.kernel)

    def AT(self, y):
        return self._correlate(y, self.kernel[::-1, ::-1])

    def output_shape(self, x_shape):
        x_shape = tuple(x_shape)
        if len(x_shape) != 4:
            raise ValueError(f"blur takes images (B, H, W, C); got shape {x_shape}.")
        return x_shape


@pytree_dataclass
class Dense(LinearOperator):
    """y = x_flat @ W^T, `(B, m)`, for x `(B, *shape)`; W `(m, prod(shape))`, W_pinv its pseudo-inverse."""

    W: jax.Array
    W_pinv: jax.Array
    shape: tuple = static_field()
    scale: float | None = static_field(default=None)

    def A(self, x):
        return x.reshape(x.shape[0], -1) @ self.W.T

    def AT(self, y):
        return (y @ self.W).reshape((y.shape[0],) + self.shape)

    def pinv(self, y):
        return (y @ self.W_pinv.T).reshape((y.shape[0],) + self.shape)

    def output_shape(self, x_shape):
        x_shape = tuple(x_shape)
        if x_shape[1:] != self.shape:
            raise ValueError(f"dense operator of shape {tuple(self.W.shape)} takes x of shape (B, *{self.shape}); "
                             f"got {x_shape}.")
        return (x_shape[0], self.W.shape[0])

    def input_shape(self, y_shape):
        y_shape = tuple(y_shape)
        if len(y_shape) != 2 or y_shape[1] != self.W.shape[0]:
            raise ValueError(f"dense operator of shape {tuple(self.W.shape)} observes y of shape (B, "
                             f"{self.W.shape[0]}); got {y_shape}.")
        return (y_shape[0],) + self.shape


# ---------------------------------------------------------------------------------------
# Constructors.


def mask(m) -> Subspace:
    """y = m x: the pixels (entries) where m = 1 are observed. m: x's shape or broadcastable to it."""
    m = jnp.asarray(m)
    if not jnp.issubdtype(m.dtype, jnp.floating):
        m = m.astype(jnp.float32)
    return Subspace(m)


def colour_projection(basis=COLOR_BASIS, known=(0,)) -> Subspace:
    """y = the coordinates `known` of x @ basis on the colour axis (default: the grey one,
    sqrt 3 times the channel mean, of the reference's orthonormal `COLOR_BASIS`)."""
    basis = np.asarray(basis, np.float64)
    square = basis.ndim == 2 and basis.shape[0] == basis.shape[1]
    if not (square and np.allclose(basis.T @ basis, np.eye(len(basis)), atol=1e-6)):
        raise ValueError(f"basis must be an orthonormal (C, C) matrix, got shape {basis.shape}.")
    m = np.zeros(len(basis), np.float32)
    m[list(known)] = 1.0
    basis = jnp.asarray(basis, jnp.result_type(float))  # float64 under jax_enable_x64
    return Subspace(jnp.asarray(m, basis.dtype), basis, jnp.linalg.inv(basis))


def average_pool(factor: int) -> AveragePool:
    """y = the means of factor x factor blocks (a low-resolution image: super-resolution)."""
    if not (isinstance(factor, (int, np.integer)) and factor >= 1):
        raise ValueError(f"The pooling factor must be an integer >= 1, got {factor!r}.")
    return AveragePool(int(factor))


def gaussian_kernel(std: float, radius: int | None = None) -> np.ndarray:
    """A normalised 2-D Gaussian kernel `(2r + 1, 2r + 1)`, r = ceil(3 std) by default."""
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"The blur's std must be a finite number > 0, got {std!r}.")
    radius = math.ceil(3 * std) if radius is None else radius
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / std) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def blur(kernel) -> Blur:
    """y = kernel * x ('same' depthwise convolution, zero padding); kernel `(kh, kw)`, odd sizes
    (e.g. `gaussian_kernel(1.0)`)."""
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"The blur kernel must be 2-D with odd sizes, got shape {kernel.shape}.")
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        kernel = kernel.astype(jnp.float32)
    return Blur(kernel)


def dense(matrix, shape=None) -> Dense:
    """y = W x for x `(B, *shape)` (default: `(B, D)`, D = W's columns), flattened. A+ is
    numpy's pinv of W; `scale` is set when W's nonzero singular values are equal (rtol 1e-6)."""
    W = np.asarray(matrix)
    if W.ndim != 2:
        raise ValueError(f"matrix must be 2-D (m, D), got shape {W.shape}.")
    shape = (W.shape[1],) if shape is None else tuple(int(s) for s in shape)
    if math.prod(shape) != W.shape[1]:
        raise ValueError(f"matrix has {W.shape[1]} columns but x's shape {shape} has {math.prod(shape)} entries.")
    sv = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    sv = sv[sv > sv.max() * 1e-10] if sv.size and sv.max() > 0 else sv[:0]
    scale = float(sv[0]) if sv.size and np.allclose(sv, sv[0], rtol=1e-6, atol=0) else None
    dtype = W.dtype if np.issubdtype(W.dtype, np.floating) else np.float64
    W_pinv = np.linalg.pinv(W.astype(np.float64)).astype(dtype)
    return Dense(jnp.asarray(W.astype(dtype)), jnp.asarray(W_pinv), shape, scale)  # float32 unless x64

"""``Parameter``, ``Module`` and ``Sequential``: the machinery every layer is built on.

There is no autograd here. Each layer writes its own backward pass:

* ``forward(x)`` computes the output and **remembers** what the backward needs (the input,
  the sampling offsets, ...), overwriting what the previous call remembered;
* ``backward(grad)`` takes the gradient of the loss with respect to the output of the **most
  recent** ``forward`` call, **adds** (``+=``) the gradients of the layer's parameters into their
  ``.grad`` and returns the gradient with respect to the forward's input.

So one training step reads::

    model.zero_grad()                 # every .grad back to zeros
    y = model(x)                      # forward, remembering
    loss, grad_y = loss_and_grad(y)   # e.g. mean squared error and 2 (y - t) / y.size
    model.backward(grad_y)            # accumulate into every .grad
    optimizer.step()                  # scratchvision.optim: update every .data

Because ``backward`` accumulates, two backward calls add their gradients (what you want for
gradient accumulation over several small batches, and a bug if you forget ``zero_grad``).

Parameters are registered by assignment, as in PyTorch: ``self.weight = Parameter(...)`` or
``self.conv = Conv2d(...)`` inside ``__init__`` (after ``super().__init__()``) records the name,
and ``named_parameters()`` lists them in registration order with dotted names of submodules
(``conv_offset.weight``). Those names are torch's, so a torch ``state_dict`` converted with
``{k: v.numpy() for k, v in torch_module.state_dict().items()}`` loads with
``load_state_dict``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np

from .. import _checks
from .._dispatch import BACKENDS

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "wrapped_methods"]


class Parameter:
    """A trainable array and the gradient of the loss with respect to it.

    Attributes:
        data: the values, a C-contiguous float32 or float64 array of any shape (a private copy
            of the array the Parameter was built from). Optimizers update it in place.
        grad: same shape and dtype as ``data``. It starts as **zeros**, not None: every
            ``backward`` adds into it with ``+=``, and ``zero_grad`` fills it with zeros again.
            (PyTorch starts with None and its optimizers skip such parameters; here a parameter
            the loss never reached just has a zero gradient. SGD without momentum or weight
            decay then leaves it unchanged; Adam still moves it by its earlier momentum.)
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        data = _checks.float_array(data, "data")
        self.data = np.array(data, copy=True, order="C")
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def accumulate(self, grad: np.ndarray) -> None:
        """``self.grad += grad`` after checking the shape (the one place layers add gradients)."""
        grad = np.asarray(grad)
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient of shape {grad.shape} for a parameter of shape "
                             f"{self.data.shape}")
        self.grad += grad

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer: parameter registry, gradients, train/eval, state dicts.

    Subclasses call ``super().__init__()`` first, assign their Parameters and submodules as
    attributes, and implement ``forward(...)`` and ``backward(grad)`` (see the module
    docstring for the contract). ``layer(x)`` is ``layer.forward(x)``.

    Attributes:
        training: True after ``train()`` (the default), False after ``eval()``. The layers of
            this package behave the same in both modes; the flag is there for layers that do
            not (dropout, batch norm) and for user code.
    """

    def __init__(self):
        # object.__setattr__: our own __setattr__ looks these dictionaries up
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration

    def __setattr__(self, name: str, value) -> None:
        registry = self.__dict__.get("_parameters")
        if registry is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                 f"assigning attributes (assigning {name!r})")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name: str, module: Module) -> None:
        """Register ``module`` under ``name`` (for names that are not identifiers, like
        Sequential's ``"0"``)."""
        if not isinstance(module, Module):
            raise TypeError(f"{name} must be a Module, got {type(module).__name__}")
        setattr(self, name, module)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def modules(self) -> Iterator[Module]:
        """This module and every submodule, depth first."""
        yield self
        for child in self._modules.values():
            yield from child.modules()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(name, Module)`` pairs for this module (named ``prefix``, ``""`` at the top) and
        every submodule, depth first, with torch's dotted names."""
        yield prefix, self
        for child_name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{child_name}" if prefix else child_name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(name, Parameter)`` pairs: this module's own, in registration order, then each
        submodule's under ``"<submodule>.<name>"``, recursively (torch's order and names)."""
        for name, param in self._parameters.items():
            yield prefix + name, param
        for child_name, child in self._modules.items():
            yield from child.named_parameters(prefix + child_name + ".")

    def parameters(self) -> list[Parameter]:
        """Every Parameter, in the order of :meth:`named_parameters`."""
        return [param for _, param in self.named_parameters()]

    # ------------------------------------------------------------------ training state

    def zero_grad(self) -> None:
        """Fill every parameter's ``.grad`` with zeros."""
        for param in self.parameters():
            param.zero_grad()

    def train(self, mode: bool = True) -> Module:
        """Set ``training`` on this module and every submodule; returns self."""
        mode = _checks.boolean(mode, "mode")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        """``train(False)``."""
        return self.train(False)

    def set_backend(self, backend: str) -> Module:
        """Run every layer (this one and its submodules) that calls an op on ``backend``
        (``"auto"``, ``"loop"``, ``"numpy"``, ``"numba"`` or ``"cuda"``); returns self."""
        _checks.choice(backend, "backend", BACKENDS)
        for module in self.modules():
            if "backend" in module.__dict__:
                object.__setattr__(module, "backend", backend)
        return self

    # ------------------------------------------------------------------ state dicts

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{name: copy of the parameter's data}`` in the order of :meth:`named_parameters`."""
        return {name: param.data.copy() for name, param in self.named_parameters()}

    def load_state_dict(self, state_dict) -> None:
        """Copy the arrays of ``state_dict`` (name -> array) into the parameters.

        Strict, like torch's default: the names must be exactly those of
        :meth:`named_parameters` (``KeyError`` listing the missing and unexpected ones) and
        every shape must match (``ValueError`` naming the key). Values are cast to each
        parameter's dtype. Nothing is changed unless everything matches.
        """
        params = dict(self.named_parameters())
        missing = [name for name in params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in params]
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected}; expected exactly {list(params)}")
        values = {}
        for name, param in params.items():
            value = _checks.float_array(state_dict[name], f"state_dict[{name!r}]")
            if value.shape != param.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, but the "
                                 f"parameter {name!r} has shape {param.shape}")
            values[name] = value
        for name, value in values.items():
            np.copyto(params[name].data, value)  # in place: optimizers keep their reference

    # ------------------------------------------------------------------ forward / backward

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    def saved_state(self) -> list:
        """What this module and every submodule remembered from their most recent forward.

        A layer applied to several inputs with the same parameters -- a detection head run on
        every pyramid level -- keeps one such state per input and hands each back with
        :meth:`restore_saved_state` before that input's backward: the weights are shared, the
        activations are not.
        """
        return [(module, module._saved) for module in self.modules()]

    @staticmethod
    def restore_saved_state(state: list) -> None:
        """Make every module of ``state`` (from :meth:`saved_state`) remember that forward."""
        for module, saved in state:
            object.__setattr__(module, "_saved", saved)

    def _save_for_backward(self, **values) -> None:
        """Remember what ``backward`` needs; replaces what the previous forward saved."""
        object.__setattr__(self, "_saved", values)

    def _saved_for_backward(self) -> dict:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward: backward "
                               f"needs the values saved by the most recent forward call")
        return self._saved

    # ------------------------------------------------------------------ printing

    def extra_repr(self) -> str:
        """The constructor arguments shown by ``repr``; layers override it."""
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"


class ModuleList(Module):
    """Submodules held in a list, named ``"0"``, ``"1"``, ... (``torch.nn.ModuleList``): it
    registers their parameters under those names and has no forward of its own."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]


class Sequential(ModuleList):
    """Modules applied one after the other: ``Sequential(a, b, c)(x) == c(b(a(x)))``.

    Submodules are named ``"0"``, ``"1"``, ... (so parameters are ``"0.weight"``, ...), as in
    torch. ``backward(grad)`` runs the submodules' backward in reverse order and returns the
    gradient with respect to the input of the first one.
    """

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x

    def backward(self, grad):
        for module in reversed(list(self)):
            grad = module.backward(grad)
        return grad


@contextlib.contextmanager
def wrapped_methods(wraps):
    """Inside the ``with`` block, ``module.<attr>`` is ``wrap(original)`` for every
    ``(module, attr, wrap)`` of ``wraps``: set on that instance only (other instances of the
    class are untouched), and removed on exit, error or not, so each instance falls back to
    its class's method. For probes that time or watch layers (``profile_step``,
    ``DeformableDETR.sampling_points``) without changing them."""
    done = []
    try:
        for module, attr, wrap in wraps:
            object.__setattr__(module, attr, wrap(getattr(module, attr)))
            done.append((module, attr))
        yield
    finally:
        for module, attr in done:
            object.__delattr__(module, attr)

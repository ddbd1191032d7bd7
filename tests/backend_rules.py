"""The backend rules every op's bad-input tests share, written once.

An op's ``test_<op>_bad_input.py`` builds its ``call`` fixture with :func:`call_fixture` --
``call(**overrides)`` runs the op (forward or backward) on valid inputs with ``overrides``
applied -- and imports the three tests below; pytest collects them there, with that file's
fixture::

    from backend_rules import (call_fixture, test_the_valid_call_runs,  # noqa: F401
                               test_unavailable_backend_says_which_and_why,
                               test_unknown_backend, whole_word)

    call = call_fixture(VALID, _forward, _backward)
"""

from __future__ import annotations

import pytest

import scratchvision
from scratchvision import _dispatch


def whole_word(name: str) -> str:
    """A regex matching ``name`` as a whole word (error messages name the argument)."""
    return rf"\b{name}\b"


def call_fixture(valid: dict, forward, backward):
    """A ``call`` fixture, parametrised over ``forward`` and ``backward`` (which validate the
    same way): ``call(**changes)`` runs one of them on ``{**valid, **changes}``."""
    @pytest.fixture(params=[forward, backward], ids=["forward", "backward"])
    def call(request):
        def run(**changes):
            return request.param(**{**valid, **changes})
        return run
    return call


def test_the_valid_call_runs(call):
    call()  # the file's valid arguments run; each of its tests breaks one rule


@pytest.mark.parametrize("backend", ["gpu", "torch", "Numba", "", None])
def test_unknown_backend(call, backend):
    with pytest.raises(ValueError, match=whole_word("backend")):
        call(backend=backend)


def test_unavailable_backend_says_which_and_why(call, monkeypatch):
    why = "no CUDA GPU or driver found (test double)"
    monkeypatch.setattr(_dispatch, "_cuda_status",
                        lambda: _dispatch.TierStatus(False, "unavailable", why))
    with pytest.raises(scratchvision.BackendUnavailableError, match="cuda") as excinfo:
        call(backend="cuda")
    assert why in str(excinfo.value)
    call(backend="auto")  # "auto" never picks a tier that cannot run

"""The backend rules every op's bad-input tests share, written once.

An op's ``test_<op>_bad_input.py`` defines a ``call`` fixture -- ``call(**overrides)`` runs the
op (forward or backward) on valid inputs with ``overrides`` applied -- and imports the two
tests below; pytest collects them there, with that file's fixture::

    from backend_rules import (test_unavailable_backend_says_which_and_why,  # noqa: F401
                               test_unknown_backend, whole_word)
"""

from __future__ import annotations

import pytest

import scratchvision
from scratchvision import _dispatch


def whole_word(name: str) -> str:
    """A regex matching ``name`` as a whole word (error messages name the argument)."""
    return rf"\b{name}\b"


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

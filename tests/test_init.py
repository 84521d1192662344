import pytest

import innerdist


def test_every_public_name_resolves():
    for name in innerdist.__all__:
        assert getattr(innerdist, name) is not None, name
    assert set(innerdist.__all__) <= set(dir(innerdist))


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        innerdist.nope  # noqa: B018

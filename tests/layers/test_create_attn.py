import pytest
import torch

from convattn.layers import CBAM, ECA, GCT, STEAM, AttnSequence, SEModule, create_attn, list_attn


@pytest.mark.parametrize("name,cls", [("se", SEModule), ("cbam", CBAM), ("eca", ECA), ("gct", GCT),
                                      ("steam", STEAM), ("SE", SEModule), ("ceca", ECA)])
def test_names(name, cls):
    m = create_attn(name, 64)
    assert isinstance(m, cls)
    x = torch.randn(2, 64, 5, 5)
    assert m(x).shape == x.shape


@pytest.mark.parametrize("none", [None, False, "", "none"])
def test_none(none):
    assert create_attn(none, 64) is None


def test_combination_applies_in_order():
    m = create_attn("se+eca", 32)
    assert isinstance(m, AttnSequence) and isinstance(m[0], SEModule) and isinstance(m[1], ECA)
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(m(x), m[1](m[0](x)))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        create_attn("sqeeze", 64)
    for n in list_attn():
        assert n in str(e.value)
    with pytest.raises(ValueError, match="conv='aw'"):
        create_attn("aw", 64)


def test_kwargs_and_classes():
    assert create_attn("eca", 64, kernel_size=7).kernel_size == 7
    assert isinstance(create_attn(SEModule, 16), SEModule)
    assert isinstance(create_attn(True, 16), SEModule)

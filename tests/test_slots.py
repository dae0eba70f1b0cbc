"""pmtud_relay.core.slots.slotted: __slots__ on frozen dataclasses on every Python version."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from pmtud_relay import config as cfg
from pmtud_relay.core.policy import Policy
from pmtud_relay.core.relay import RelayConfig
from pmtud_relay.core.slots import slotted
from pmtud_relay.peers.inbox import InboxConfig


@pytest.mark.parametrize("cls", [RelayConfig, Policy, InboxConfig, cfg.Settings])
def test_hot_path_configs_have_slots_and_stay_frozen(cls):
    obj = cls()
    assert cls.__slots__ == tuple(f.name for f in dataclasses.fields(cls))
    assert not hasattr(obj, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, dataclasses.fields(cls)[0].name, None)
    with pytest.raises((AttributeError, TypeError)):
        object.__setattr__(obj, "not_a_field", 1)  # no __dict__ to put it in
    assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj
    assert pickle.loads(pickle.dumps(obj)) == obj


def test_defaults_replace_and_repr_still_work():
    @slotted
    @dataclasses.dataclass(frozen=True)
    class Point:
        """doc"""

        x: int = 1
        y: tuple = dataclasses.field(default_factory=tuple)

    p = Point()
    assert (p.x, p.y) == (1, ()) and Point.__doc__ == "doc" and Point.__qualname__.endswith("<locals>.Point")
    assert dataclasses.replace(p, x=5) == Point(5)
    assert repr(Point(2, (3,))) == "test_defaults_replace_and_repr_still_work.<locals>.Point(x=2, y=(3,))"
    with pytest.raises(TypeError):
        slotted(Point)  # already has __slots__
    with pytest.raises(TypeError):
        slotted(int)  # not a dataclass

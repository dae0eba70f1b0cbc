"""Shared fixtures. Network-namespace fixtures only (tests marked ``netns``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def netns_ok() -> None:
    """Skip unless the namespace lab can run here (root and iproute2)."""
    from pmtud_relay.lab import have_prerequisites

    ok, why = have_prerequisites()
    if not ok:
        pytest.skip(why)


@pytest.fixture
def lab(netns_ok):
    """A fresh ECMP black-hole lab (client, router, injector, s1..s3), always torn down."""
    from pmtud_relay.lab import Lab

    with Lab(servers=3) as the_lab:
        yield the_lab

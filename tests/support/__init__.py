"""What the tests share, imported as ``tests.support.X`` (never from a test module).

- checksum: the Internet checksum (RFC 1071), word by word: the reference the core is checked
  against, so it deliberately does not use pmtud_relay.core.checksum.
- wire: the stdlib frame builder (Ethernet and VLAN tags, IPv4/IPv6, ICMP PTBs quoting TCP/UDP);
  usable where scapy is not (inside namespaces, the NFLOG wire tests).
- frames: the scapy fixture catalogue of the unit tests (every PTB layout, byte surgery).
- pcap: capture files with known answers for ``analyze``.
- nflog: nfnetlink_log messages built by hand.
- netns: namespaces (NetNS, FaultNS, in_ns), the skips for missing tools, and ``program()``, the
  one way to run code inside a namespace: a module of ``ns_programs`` under ``python -m``.
- relays: relay daemons started and stopped in namespaces, their logfmt events, the black-hole
  check; rules: what the NFLOG rules left in a namespace; peers: the routed lab's peer relays.
"""

"""NFLOG capture: the firewall copies PTBs to a netlink group; this package reads them."""

"""The thin I/O layer: one epoll reactor, dialing, and the splice pump."""

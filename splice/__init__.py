"""splice: route HTTP and TLS connections to shed VMs by name, then splice bytes zero-copy."""

__version__ = "0.1.0"

"""Sans-IO parsers over bytes: HTTP request heads, TLS ClientHello, PROXY protocol."""

"""The record/replay store of the egress gateway (``[forward.store]``, issue 11).

``settings`` parses the config table; ``keys`` turns a request into its key (pure);
``blobs`` holds bodies by SHA-256, written atomically; ``index`` is the SQLite index;
``store.Store`` ties them together (blocking, for the CLI); ``runtime.StoreRuntime``
is what the proxy keeps while serving, and ``serve``/``fetch`` answer one request.
The connection-level entry point is ``splice.exchange.serve_forward_socket``.
"""

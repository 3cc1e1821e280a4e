"""The egress gateway's pure policy layer: names, addresses, destination rules, proxy users.

``authority`` turns what a client wrote into one canonical host; ``policy`` decides whether
that host and port may be reached and whether each resolved address may be dialed;
``addresses`` names the non-public ranges; ``passwords`` checks proxy users. No I/O here.
"""

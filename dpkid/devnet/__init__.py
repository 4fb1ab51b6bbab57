"""Local stand-ins for the outside world, for tests and the demo.

Nothing here is part of a node: `dns_server` is a small authoritative DNS
server and `http_server` a challenge web server, both on 127.0.0.1, so
domain validation can be exercised without real DNS or the internet.
"""

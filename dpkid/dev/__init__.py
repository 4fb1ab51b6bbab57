"""Developer tools and stand-ins for the outside world: the demo, walkthrough,
benchmarks, golden-vector generator, a dev chain, and loopback DNS and HTTP
servers so domain validation runs without real DNS or the internet. Nothing
here is part of a node."""

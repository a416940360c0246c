"""Support code that the tests and the benchmarks share: folders built from the sample, moto's
S3 server and a proxy in front of it, memory and quiet-machine helpers, loopback clusters."""

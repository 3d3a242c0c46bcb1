"""Envoy: IR → Envoy resources (pure: `http`, `tls`, `l4`, the `renderer`), and the effectful
parts that deliver them: the `publisher` (files on the shared volume, atomically), `admin`
(what Envoy has applied) and `process` (Envoy as a supervised child outside a cluster)."""

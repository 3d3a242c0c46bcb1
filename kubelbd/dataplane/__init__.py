"""The data plane, effectful: records in the management cluster → IR → Envoy files → status.

`plane` is the loop; `intake` takes records (watched, or handed over by tenant tasks through
kubelbd.hub); `l4` allocates and records Layer 4 addresses; `tls` keeps certificates and
issuers; `status` writes what kubelbd.ir.status decides, after Envoy applied it."""

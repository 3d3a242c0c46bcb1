"""Certificates kubelbd does not get from the tenant, effectful: issued over ACME by kubelbd
itself (`acme`), or requested from cert-manager in the management cluster (`cert_manager`);
`issuers` keeps what the routes want issued and renewed. Which certificates are wanted, and
whether one needs renewing, is decided by the pure kubelbd.ir.tls."""

"""The fleet model, pure: records of every tenant → one intermediate representation.

- `http`: host ownership across tenants, precedence inside a virtual host, clusters;
- `l4`: LoadBalancer records plus allocations → listeners and clusters;
- `allocation`: pool addresses and listener ports, deterministic;
- `tls`: certificates checked, hosts matched to them, certificates to issue;
- `status`: the status every record and tenant object should show, as data.
"""

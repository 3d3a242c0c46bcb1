"""The durable contract between the tenant side and the data plane: records in the management
cluster (Route, LoadBalancer, Tenant), their typed shapes, names, CRDs and conditions.

Pure: nothing here talks to an API server. The tenant side writes records; the data plane
renders Envoy from them; both meet only here (and in `kubelbd.hub`, in-process).
"""

"""The tenant side, effectful: registration (one task per registered tenant), and for each
tenant its caches, NodePort twins, certificate copies, records, health, and the status the
data plane decided for its objects."""

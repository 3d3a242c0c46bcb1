"""The Kubernetes API, effectful: a thin JSON client (client.py) over kubernetes-asyncio's
transport (transport.py, where all of its internals are used), informers, Events, the status
writer and CRD installation. The pure stages never import this package."""

from .client import ApiError, Kube, load_kubeconfig_file, parse_kubeconfig
from .transport import KubeconfigError

__all__ = ["ApiError", "Kube", "KubeconfigError", "load_kubeconfig_file", "parse_kubeconfig"]

"""The Kubernetes API, effectful: a thin JSON client (client.py) over kubernetes-asyncio's
transport (transport.py, where all of its internals are used), tenant kubeconfigs checked
before it sees them (kubeconfig.py), informers, Events, the status writer and CRD
installation. The pure stages never import this package."""

from .client import ApiError, Kube, load_kubeconfig_file
from .kubeconfig import KubeconfigRefused, parse_kubeconfig
from .transport import KubeconfigError

__all__ = [
    "ApiError",
    "Kube",
    "KubeconfigError",
    "KubeconfigRefused",
    "load_kubeconfig_file",
    "parse_kubeconfig",
]

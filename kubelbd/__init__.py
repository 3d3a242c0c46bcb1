"""kubelbd: Layer 7 and Layer 4 load balancing for a fleet of Kubernetes clusters."""

"""The local fleet harness: real control planes, emulated nodes, used by tests and the demo."""

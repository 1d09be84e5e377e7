"""The Fleet node agent. It imports no Django: it runs on nodes that have only this package."""

AGENT_VERSION = "0.1.0"

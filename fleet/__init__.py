"""Fleet: an on-prem AI fleet manager."""

__version__ = "0.1.0"

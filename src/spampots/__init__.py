"""spampots: open-proxy / open-relay honeypot sensors and the analysis of what they capture."""

__version__ = "0.1.0"

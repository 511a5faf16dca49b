"""Policy estimates from the capture: what Port 25 Management would have prevented (port25.py)."""

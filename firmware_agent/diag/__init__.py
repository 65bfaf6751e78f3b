"""firmware_agent/diag."""

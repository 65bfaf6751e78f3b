"""firmware_agent/collector."""

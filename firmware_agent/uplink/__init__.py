"""firmware_agent/uplink."""

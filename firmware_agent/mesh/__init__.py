"""firmware_agent/mesh."""

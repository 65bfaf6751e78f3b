"""firmware_agent."""

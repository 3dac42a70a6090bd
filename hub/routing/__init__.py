"""Routing: commands, the typed context, access control and who is who."""

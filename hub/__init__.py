"""Hub: one set of AI skills in the chat apps people already use."""

__version__ = "0.1.0"

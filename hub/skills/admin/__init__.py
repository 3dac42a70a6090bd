"""The /admin skill: argument parsing, operations and the command itself."""

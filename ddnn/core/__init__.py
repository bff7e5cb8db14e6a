"""The core of every DDNN process: configuration, errors, exits, payloads, roles, the export
manifest. NumPy and pydantic only; it imports nothing else of the project."""

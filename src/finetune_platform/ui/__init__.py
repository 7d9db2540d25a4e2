"""The web UI's side of the platform: it talks to the platform only through the REST API."""

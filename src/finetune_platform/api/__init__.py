"""The REST API (FastAPI): JWT login, role-based and object-level access, an audit log of every change."""

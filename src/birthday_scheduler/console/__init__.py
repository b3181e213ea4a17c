"""The operator console at /admin: server-rendered pages over the services the API and CLI use."""

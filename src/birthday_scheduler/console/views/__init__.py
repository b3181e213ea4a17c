"""View data for the console's pages, built from the services the API and CLI use."""

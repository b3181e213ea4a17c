"""The chaos run behind `make chaos`: see chaos/__main__.py."""

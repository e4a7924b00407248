"""The package version; it must equal the crate version (checked at build and import)."""

__version__ = "0.1.0"

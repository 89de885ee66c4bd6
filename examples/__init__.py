"""Example applications built on meshkit."""

"""The plugin's version (setup.py and the package read it here)."""
__version__ = "0.1.0"

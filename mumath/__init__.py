"""mumath: the package behind the MuMath-Code notebooks (notebooks/ narrate, this package does the work)."""
__version__ = "0.1.0"

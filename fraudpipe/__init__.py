"""fraudpipe: real-time card-fraud detection. This package is the bottom layer: contracts, codec, settings,
clock and PAN tokenization (no I/O), plus the CLI entry point."""

__version__ = "0.1.0"

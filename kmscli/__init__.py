"""kmscli: AWS KMS on your own machine. Nothing heavy is imported here."""

__version__ = "0.1.0"

"""raytickets: lottery tickets and super tickets in pre-trained BERT models, at cluster scale."""

__version__ = "0.1.0"

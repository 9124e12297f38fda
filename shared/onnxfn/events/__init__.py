"""Object Storage events: typed envelopes in, stored results out."""

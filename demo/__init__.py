"""The offline demo: built-in data, pre-training, tickets, a local campaign of transfers, the report."""
